"""Per-key self-attention mass of the middle block, captured with torch module hooks.

Four hooks on one UNet: a forward pre-hook on the UNet picks which rows of each call SAG needs (a row
selection, `LastRowsOfStep`, `UncondChunk` or `LastRowsOfEachTile`, given by the host adapter: the hosts
lay out cond and uncond rows differently), a forward pre-hook on the middle block's transformer records the real grid (h, w), and
forward hooks on its first `attn1`'s `to_q` and `to_k` keep the host's own q and k of those rows. The projections run
whichever way the host's attention calls them (its own forward, an attention optimisation, a replace
patch of another guidance), and the attention output stays the host's own. The mass is reduced in query
chunks, so no (heads, N, N) matrix is ever held.
"""
from typing import Optional

import torch

from .guidance import autocast_off
from .hooks import MarkedHooks

CHUNK_ELEMENTS = 1 << 22  # float32 scores per query chunk (16 MiB)
OWNER_ATTRIBUTE = "_sag_capture"


class UnsupportedAttention(RuntimeError):
    """The middle block's self-attention ran in a way SAG cannot read (another extension changed its inputs)."""


def per_key_attention_mass(q: torch.Tensor, k: torch.Tensor, heads: int, scale: Optional[float] = None,
                           chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """(B, N): for every key token, the softmax attention it receives summed over queries, mean over heads.

    `q` and `k` are the projections (B, N, heads * dim_head). The scores and softmax are float32 with
    autocast off.
    """
    batch, tokens, inner = q.shape
    dim_head = inner // heads
    scale = dim_head ** -0.5 if scale is None else scale
    with autocast_off(q.device):
        # (B*heads, N, dim_head) and (B*heads, dim_head, N), each made by one float32 copy
        q = _float32_copy(q.reshape(batch, tokens, heads, dim_head).transpose(1, 2)).view(-1, tokens, dim_head)
        k_t = _float32_copy(k.reshape(batch, tokens, heads, dim_head).permute(0, 2, 3, 1)).view(-1, dim_head, tokens)
        rows = max(1, chunk_elements // (batch * heads * tokens))
        mass = None
        for start in range(0, tokens, rows):
            scores = torch.baddbmm(k_t.new_empty(()), q[:, start:start + rows], k_t, beta=0, alpha=scale)
            chunk = scores.softmax(dim=-1).sum(dim=1)
            mass = chunk if mass is None else mass.add_(chunk)
    return mass.view(batch, heads, tokens).mean(dim=1)


def _float32_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 copy of `t` in one kernel (`.float().contiguous()` may take two)."""
    return torch.empty(t.shape, dtype=torch.float32, device=t.device).copy_(t)


def middle_block_attention(unet: torch.nn.Module):
    """(the middle block's transformer, its first attn1) of an LDM-layout UNet (ldm's, sgm's, Forge's and
    ComfyUI's, which keep its layout), or None where the middle block has no transformer (SSD-1B)."""
    middle = getattr(unet, "middle_block", None)
    if middle is None or len(middle) < 2 or not hasattr(middle[1], "transformer_blocks"):
        return None
    return middle[1], middle[1].transformer_blocks[0].attn1


class LastRowsOfStep:
    """A1111's layout: the rows of all UNet calls of a step, concatenated in call order, are numbered
    0..total-1, and the uncond rows are the last `target` of them (one call, chunks, or a call of their own)."""

    def __init__(self, total: int, target: int):
        self.target, self._start, self._end = target, total - target, total
        self._seen = 0

    def select(self, batch: int, call_kwargs: dict):
        """(first row, end row, where they go in the target, period) of this call to record, or None: the rows
        first..end, or (with a period) first..end of every block of `period` rows."""
        offset, self._seen = self._seen, self._seen + batch
        low, high = max(offset, self._start), min(offset + batch, self._end)
        return None if low >= high else (low - offset, high - offset, low - self._start, None)


class UncondChunk:
    """The Forge family's layout: every UNet call names its chunks in `transformer_options["cond_or_uncond"]`
    (0 cond, 1 uncond), chunks of equal size in any order; the first uncond chunk of the step is recorded.
    A step whose calls name no uncond chunk (CFG 1, skipped uncond) records nothing."""

    UNCOND = 1

    def __init__(self, target: int):
        self.target = target
        self._done = False

    def select(self, batch: int, call_kwargs: dict):
        chunks = (call_kwargs.get("transformer_options") or {}).get("cond_or_uncond") or []
        if self._done or self.UNCOND not in chunks:
            return None
        size, index = batch // len(chunks), chunks.index(self.UNCOND)
        if size != self.target:
            raise UnsupportedAttention(f"an uncond chunk of {size} rows in a step of {self.target} images")
        self._done = True
        return index * size, (index + 1) * size, 0, None


class LastRowsOfEachTile:
    """A1111's Tiled Diffusion: one UNet call over tiles of the image, each tile `per_tile` rows in the step's
    order (the uncond rows last); the last `count` rows of every tile are recorded, tile after tile."""

    def __init__(self, tiles: int, per_tile: int, count: int):
        self.target, self._per_tile, self._count = tiles * count, per_tile, count
        self._done = False

    def select(self, batch: int, call_kwargs: dict):
        if self._done:
            return None
        if batch != self.target // self._count * self._per_tile:
            raise UnsupportedAttention(f"a call of {batch} rows for {self.target // self._count} tiles of "
                                       f"{self._per_tile}")
        self._done = True
        return self._per_tile - self._count, self._per_tile, 0, self._per_tile


def _rows(t: torch.Tensor, call: tuple) -> torch.Tensor:
    """The rows of `t` (one per row of the UNet call) that `call` selects: first..end, or first..end of every
    block of `period` rows."""
    low, high, _, period, batch = call
    if period is None:
        return t[low:high]
    return t.reshape(batch // period, period, *t.shape[1:])[:, low:high].reshape(-1, *t.shape[1:])


class MiddleBlockCapture(MarkedHooks):
    """Hooks on one UNet, its middle-block transformer and that transformer's first attn1; one capture per
    attn1 instance.

    Use: `arm(rows)` with a row selection before the UNet calls of a step, `take()` after them.
    """

    ATTRIBUTE = OWNER_ATTRIBUTE

    def __init__(self, unet: torch.nn.Module, transformer: torch.nn.Module, attn: torch.nn.Module, owner=None,
                 chunk_elements: int = CHUNK_ELEMENTS):
        MiddleBlockCapture.release(attn)
        self.attn, self.owner, self.chunk_elements = attn, owner, chunk_elements
        self.error = None
        self._rows, self._latent_size = None, None
        self._call = None  # (first row, end row, target offset, period, batch) of the UNet call in progress
        self._grid = None  # (h, w) of that call, once its middle transformer runs
        self._q = None
        self._recorded = False
        self._middle_runs = 0
        self._handles = [
            unet.register_forward_pre_hook(self._before_unet, with_kwargs=True),
            transformer.register_forward_pre_hook(self._before_transformer),
            attn.to_q.register_forward_hook(self._after_to_q),
            attn.to_k.register_forward_hook(self._after_to_k),
        ]
        setattr(attn, OWNER_ATTRIBUTE, self)

    def is_attached_to(self, attn: torch.nn.Module) -> bool:
        return bool(self._handles) and getattr(attn, OWNER_ATTRIBUTE, None) is self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._disarm()
        if getattr(self.attn, OWNER_ATTRIBUTE, None) is self:
            delattr(self.attn, OWNER_ATTRIBUTE)

    def arm(self, rows, latent_size: Optional[tuple] = None) -> None:
        """Record the rows `rows` (LastRowsOfStep, UncondChunk, LastRowsOfEachTile) selects from the UNet calls that follow; with
        `latent_size`, those rows' calls must run on latents of that size (UnsupportedAttention where they
        hold tiles of the image: the mask would be a tile's, stretched over the image)."""
        self._rows, self._latent_size = rows, None if latent_size is None else tuple(latent_size)
        self._mass = None
        self._filled = 0
        self._middle_runs = 0
        self.grid = None

    def take(self):
        """(mass (target rows, h*w), grid (h, w)) when every target row was seen, else None. Disarms.
        UnsupportedAttention where the middle block's attention ran without passing its hooks since `arm` (a
        compiled UNet, which keeps what it traced and ignores hooks added after)."""
        armed, runs = self._rows is not None, self._middle_runs
        complete = armed and self._mass is not None and self._filled == self._rows.target
        self._disarm()
        if armed and runs == 0:
            raise UnsupportedAttention("the model ran without passing the hooks on its middle block (a compiled or "
                                       "replaced UNet?)")
        return (self._mass, self.grid) if complete else None

    def _disarm(self):
        self._rows, self._call, self._grid, self._q, self._recorded = None, None, None, None, False

    def _guarded(self, work, *args):
        """Run hook work; an error disarms the capture and is kept for the session (a hook must never
        abort the host's UNet call)."""
        if self._rows is None:
            return
        try:
            work(*args)
        except Exception as error:
            self.error = error
            self._disarm()

    def _before_unet(self, module, args, kwargs):
        self._guarded(self._select, args, kwargs)

    def _select(self, args, kwargs):
        x = args[0] if args else kwargs["x"]
        selected = self._rows.select(x.shape[0], kwargs)
        if selected is not None and self._latent_size not in (None, tuple(x.shape[-2:])):
            size, whole = ("x".join(map(str, shape)) for shape in (x.shape[-2:], self._latent_size))
            raise UnsupportedAttention(f"the model ran on a {size} tile of the {whole} latent (Tiled Diffusion?): SAG's "
                                       "mask needs the middle-block attention of the whole image")
        self._call = None if selected is None else (*selected, x.shape[0])
        self._grid, self._q, self._recorded = None, None, False

    def _before_transformer(self, module, args):
        if self._call is not None:
            self._guarded(self._enter_transformer, args[0])

    def _enter_transformer(self, x):
        if self._grid is not None:  # e.g. ControlNet's reference modes run a pass of their own inside the UNet's
            raise UnsupportedAttention("the middle block ran twice in one UNet call (another extension runs a "
                                       "pass of its own inside the UNet's)")
        self._grid = tuple(x.shape[-2:])

    def _after_to_q(self, module, args, output):
        if self._rows is not None:
            self._middle_runs += 1
        if self._call is not None and self._grid is not None and self._q is None and not self._recorded:
            self._guarded(self._keep_q, output)

    def _keep_q(self, q):
        self._check(q, "queries")
        self._q = _rows(q, self._call)

    def _after_to_k(self, module, args, output):
        if self._q is not None:
            self._guarded(self._record, output)

    def _check(self, projection: torch.Tensor, what: str):
        height, width = self._grid
        batch = self._call[4]
        if projection.shape[0] != batch or projection.shape[1] != height * width:
            raise UnsupportedAttention(
                f"the middle block's self-attention got {what} {tuple(projection.shape)} for a {height}x{width} "
                f"grid of {batch} rows (another extension changed its input)")

    def _record(self, k):
        self._check(k, "keys")
        at, grid, q = self._call[2], self._grid, self._q
        self._q = None
        if self.grid is not None and self.grid != grid:
            raise UnsupportedAttention(f"middle-block grid changed within a step: {self.grid} -> {grid}")
        self.grid, self._recorded = grid, True
        mass = per_key_attention_mass(q, _rows(k, self._call), self.attn.heads, getattr(self.attn, "scale", None),
                                      self.chunk_elements)
        rows = mass.shape[0]
        if rows == self._rows.target:  # the usual case: all target rows in one call, kept as they are
            self._mass = mass
        else:
            if self._mass is None:
                self._mass = mass.new_empty(self._rows.target, grid[0] * grid[1])
            self._mass[at:at + rows] = mass
        self._filled += rows
