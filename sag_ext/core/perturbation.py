"""The two attention changes of PAG and SEG, and the hooks that make them in chosen self-attention layers
for chosen rows of a UNet call.

    PAG (Ahn et al. 2024):  attention(q, k, v) = v          the identity attention map, never built
    SEG (Hong 2024):        attention(G_sigma * q, k, v)    the query blurred over the token grid by a
                                                            2-D gaussian; sigma = infinity: their mean

The hooks read and change the host's own projections whichever way its attention calls them (its own
forward, an attention optimisation, another extension's replace patch): SEG's on `to_q`'s output, PAG's
on the input of `to_out`'s linear layer, which gets the host's own `to_v` output in place of the
attention's. Armed with several changes, the hooks make them side by side: the rows are tiles of B images,
tile i carrying change i or none (the host's own rows), in one call or several (`PerturbationHooks.arm`).
"""
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .hooks import MarkedHooks

OWNER_ATTRIBUTE = "_guidance_perturbation"


class UnsupportedPerturbation(RuntimeError):
    """A chosen layer ran in a way the perturbation cannot follow (another extension changed its input)."""


def seg_kernel_size(sigma: float, height: int, width: int) -> int:
    """SEG's gaussian kernel: ceil(6 sigma) + 1 taps made odd, capped by the grid as pamparamm's
    `gaussian_blur_2d` caps it (by the width, to an odd size), and so that its reflect padding fits the
    grid (where that reference would fail)."""
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, width - (width % 2 - 1))
    return min(size, 2 * min(height, width) - 1)


def smoothed_query(q: torch.Tensor, grid: tuple, sigma: float) -> torch.Tensor:
    """SEG's query: (rows, h*w, channels) blurred over the (h, w) grid by a gaussian of `sigma` with
    reflect padding, in q's dtype; sigma < 0 (infinity): every token's query is their mean."""
    rows, tokens, channels = q.shape
    if sigma < 0:  # contiguous, as the projection was: some attention optimisations view q's rows
        return q.mean(dim=1, keepdim=True).expand(rows, tokens, channels).contiguous()
    height, width = grid
    size = seg_kernel_size(sigma, height, width)
    half = (size - 1) * 0.5
    pdf = torch.linspace(-half, half, size, device=q.device).div_(sigma).square_().mul_(-0.5).exp_()
    kernel = (pdf / pdf.sum()).to(q.dtype)
    weight = (kernel[:, None] * kernel[None, :]).expand(channels, 1, size, size)
    image = q.transpose(1, 2).reshape(rows, channels, height, width)
    pad = size // 2
    blurred = F.conv2d(F.pad(image, (pad, pad, pad, pad), mode="reflect"), weight, groups=channels)
    return blurred.reshape(rows, channels, tokens).transpose(1, 2)


def _blocks(images: list, per_image: int) -> list:
    """The row slices of `images` (ascending), `per_image` rows each, one slice per run of neighbours."""
    blocks, start = [], None
    for position, image in enumerate(images):
        if start is None:
            start = image
        if position + 1 == len(images) or images[position + 1] != image + 1:
            blocks.append(slice(start * per_image, (image + 1) * per_image))
            start = None
    return blocks


@dataclass(frozen=True)
class Change:
    """One attention change in a pass: "identity" (PAG) or "smoothed_query" (SEG, `sigma`), made in the
    self-attention modules `layers` (a set of ids)."""

    kind: str
    layers: frozenset
    sigma: float = 0.0


class PerturbationHooks(MarkedHooks):
    """Hooks on one UNet and the self-attention layers any of a generation's changes names. Idle but while
    `armed`."""

    ATTRIBUTE = OWNER_ATTRIBUTE

    def __init__(self, unet: torch.nn.Module, layers: list, owner=None):
        """`layers`: [(spatial transformer, attn1)] (layers.find_layers)."""
        self.unet, self.owner = unet, owner
        self._changes, self._tile = None, 0
        self._images = 0  # the rows of the UNet call in progress
        self._first = self._seen = 0  # the pass's images before that call, and so far
        self._blocks = {}  # (change, layer rows) -> the rows it changes in that call
        self._grids = {}  # id(spatial transformer) -> (h, w) of the call in progress
        self._values = {}  # id(attn1) -> its to_v output in this call
        self.fired = 0
        self._handles = [unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)]
        for transformer, attn in {id(attn): (transformer, attn) for transformer, attn in layers}.values():
            self._handles += [
                transformer.register_forward_pre_hook(self._grid_recorder(transformer)),
                attn.to_q.register_forward_hook(self._query_changer(transformer, attn)),
                attn.to_v.register_forward_hook(self._value_keeper(attn)),
                attn.to_out[0].register_forward_pre_hook(self._output_changer(attn)),
            ]
        setattr(unet, OWNER_ATTRIBUTE, self)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._changes = None
        if getattr(self.unet, OWNER_ATTRIBUTE, None) is self:
            delattr(self.unet, OWNER_ATTRIBUTE)

    def arm(self, changes: list, tile: int) -> None:
        """The UNet calls from now on make `changes[i]` in the rows of tile i: rows are images in tiles of
        `tile`, the tiles repeating in the order of `changes`, counted across the calls (one call of
        len(changes) * tile rows, or several); a None change leaves its tile (the host's own rows) alone."""
        self._changes, self._tile, self.fired, self._seen = list(changes), tile, 0, 0
        self._grids, self._values = {}, {}

    def disarm(self, check: bool = True) -> None:
        """Idle again. With `check`, raises UnsupportedPerturbation if the calls since `arm` passed no chosen
        layer."""
        armed, self._changes, self._grids, self._values = self._changes is not None, None, {}, {}
        if check and armed and self.fired == 0:
            raise UnsupportedPerturbation("the model ran without its chosen self-attention layers (a compiled or "
                                          "replaced UNet?)")

    @contextlib.contextmanager
    def armed(self, changes: list, tile: int):
        """`arm` for the calls inside (see there); disarmed on the way out, whatever happens."""
        self.arm(changes, tile)
        try:
            yield
        except BaseException:
            self.disarm(check=False)
            raise
        self.disarm()

    @contextlib.contextmanager
    def paused(self):
        """Idle for the UNet calls inside (another method's pass made inside a call of this step), which do not
        count as the pass's rows."""
        changes, self._changes = self._changes, None
        try:
            yield
        finally:
            self._changes = changes

    # ---- the hooks -------------------------------------------------------------------------------------

    def _before_unet(self, module, args, kwargs):
        if self._changes is not None:
            self._images = (args[0] if args else kwargs["x"]).shape[0]
            self._first, self._seen = self._seen, self._seen + self._images  # the pass's images before this call
            self._grids, self._values, self._blocks = {}, {}, {}

    def _grid_recorder(self, transformer):
        def record(module, args):
            if self._changes is not None:
                self._grids[id(transformer)] = tuple(args[0].shape[-2:])
        return record

    def _rows_of(self, attn, kind: str, tensor: torch.Tensor) -> list:
        """[(change, blocks)] of the changes of `kind` made in `attn`, for a layer call over `tensor`: blocks
        is None for all of its rows, else the slices of the rows it changes (slices, not an index tensor,
        which would cost a copy to the device and a wait for it in every call). A layer call has more rows
        than the UNet call's images where another extension splits each image's tokens into tiles
        (Hypertile); they stay image by image."""
        rows = tensor.shape[0]
        if self._images == 0 or rows % self._images:
            raise UnsupportedPerturbation(f"a self-attention layer got {rows} rows in a UNet call of {self._images}")
        found = []
        for index, change in enumerate(self._changes):
            if change is None or change.kind != kind or id(attn) not in change.layers:
                continue
            key = (index, rows)
            if key not in self._blocks:
                images = [image for image in range(self._images)
                          if (self._first + image) // self._tile % len(self._changes) == index]
                self._blocks[key] = None if len(images) == self._images else _blocks(images, rows // self._images)
            if self._blocks[key] is None or self._blocks[key]:
                found.append((change, self._blocks[key]))
        return found

    def _query_changer(self, transformer, attn):
        def change(module, args, q):
            if self._changes is None:
                return None
            found = self._rows_of(attn, "smoothed_query", q)
            if not found:
                return None
            grid = self._grids.get(id(transformer))
            if grid is None or grid[0] * grid[1] != q.shape[1] or q.shape[0] != self._images:
                raise UnsupportedPerturbation(f"SEG's query of {tuple(q.shape)} is not the {grid} grid of its block "
                                              "(another extension splits self-attention's tokens)")
            self.fired += 1
            if found[0][1] is None:
                return smoothed_query(q, grid, found[0][0].sigma)
            q = q.clone()
            for step, blocks in found:
                for rows in blocks:
                    q[rows] = smoothed_query(q[rows], grid, step.sigma)
            return q
        return change

    def _value_keeper(self, attn):
        def keep(module, args, v):
            if self._changes is not None:
                self._values[id(attn)] = v
        return keep

    def _output_changer(self, attn):
        def change(module, args):
            if self._changes is None:
                return None
            out = args[0]
            found = self._rows_of(attn, "identity", out)
            if not found:
                return None
            v = self._values.pop(id(attn), None)
            if v is None or v.shape != out.shape:
                raise UnsupportedPerturbation(f"PAG's values {None if v is None else tuple(v.shape)} do not match "
                                              f"the attention output {tuple(out.shape)}")
            self.fired += 1
            if found[0][1] is None:
                return (v,) + tuple(args[1:])
            out = out.clone()
            for _, blocks in found:
                for rows in blocks:
                    out[rows] = v[rows]
            return (out,) + tuple(args[1:])
        return change
