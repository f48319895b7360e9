"""Per-key self-attention mass of the middle block, captured with torch module hooks.

Two hooks on one UNet: a forward pre-hook on the middle block's transformer records the real grid
(h, w) and counts batch rows, and a forward hook on its first `attn1` recomputes q and k for the rows
SAG needs with the module's own `to_q`/`to_k`. The attention output stays the host's own. The mass is
reduced in query chunks, so no (heads, N, N) matrix is ever held.
"""
from typing import Callable, Optional

import torch

from .guidance import autocast_off

CHUNK_ELEMENTS = 1 << 22  # float32 scores per query chunk (16 MiB)
OWNER_ATTRIBUTE = "_sag_capture"


class UnsupportedAttention(RuntimeError):
    """attn1 was called in a way SAG cannot read (another extension changed its inputs)."""


def per_key_attention_mass(attn: torch.nn.Module, x: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS,
                           key_input: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """(B, N): for every key token, the softmax attention it receives summed over queries, mean over heads.

    q and k come from the module's own projections (LoRA, FP8 and low-VRAM placement keep working);
    `key_input(x)`, if given, is what the host's attention feeds `to_k` instead of x (the webui's
    hypernetworks). The scores and softmax are float32 with autocast off.
    """
    q, k = attn.to_q(x), attn.to_k(x if key_input is None else key_input(x))
    heads = attn.heads
    batch, tokens, inner = q.shape
    dim_head = inner // heads
    scale = getattr(attn, "scale", dim_head ** -0.5)
    with autocast_off(x.device):
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
    """(the middle block's transformer, its first attn1) of an LDM-layout UNet (ldm's, sgm's, and the
    UNets that copy their layout), or None where the middle block has no transformer (SSD-1B)."""
    middle = getattr(unet, "middle_block", None)
    if middle is None or len(middle) < 2 or not hasattr(middle[1], "transformer_blocks"):
        return None
    return middle[1], middle[1].transformer_blocks[0].attn1


class MiddleBlockCapture:
    """Hooks on one middle-block transformer and its first attn1; one capture per attn1 instance.

    Use: `arm(total_rows, target_rows)` before the UNet calls of a step, `take()` after them. The rows
    of all UNet calls of a step, concatenated in call order, are numbered 0..total_rows-1; the last
    `target_rows` of them are recorded (the uncond rows in the webui's batch layout).
    """

    def __init__(self, transformer: torch.nn.Module, attn: torch.nn.Module, owner=None,
                 chunk_elements: int = CHUNK_ELEMENTS, key_input=None):
        MiddleBlockCapture.release(attn)
        self.transformer, self.attn, self.owner = transformer, attn, owner
        self.chunk_elements, self.key_input = chunk_elements, key_input
        self.error = None
        self._armed = False
        self._handles = [
            transformer.register_forward_pre_hook(self._before_transformer),
            attn.register_forward_hook(self._after_attn, with_kwargs=True),
        ]
        setattr(attn, OWNER_ATTRIBUTE, self)

    @staticmethod
    def attached(attn: torch.nn.Module):
        """The capture attached to `attn`, if any."""
        return getattr(attn, OWNER_ATTRIBUTE, None)

    @staticmethod
    def release(attn: torch.nn.Module) -> None:
        """Remove whatever capture (ours or a stale one) is attached to `attn`."""
        capture = MiddleBlockCapture.attached(attn)
        if capture is not None:
            capture.remove()

    def is_attached_to(self, attn: torch.nn.Module) -> bool:
        return bool(self._handles) and getattr(attn, OWNER_ATTRIBUTE, None) is self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._armed = False
        if getattr(self.attn, OWNER_ATTRIBUTE, None) is self:
            delattr(self.attn, OWNER_ATTRIBUTE)

    def arm(self, total_rows: int, target_rows: int) -> None:
        self._armed = True
        self._rows_seen = 0
        self._target = (total_rows - target_rows, total_rows)
        self._pending = None
        self._mass = None
        self._filled = 0
        self.grid = None

    def take(self):
        """(mass (target_rows, h*w), grid (h, w)) when every target row was seen, else None. Disarms."""
        complete = self._armed and self._mass is not None and self._filled == self._mass.shape[0]
        self._armed = False
        return (self._mass, self.grid) if complete else None

    def _before_transformer(self, module, args):
        if not self._armed:
            return
        batch, _, height, width = args[0].shape
        self._pending = (self._rows_seen, batch, height, width)
        self._rows_seen += batch

    def _after_attn(self, module, args, kwargs, output):
        pending, self._pending = self._pending, None
        if not self._armed or pending is None:
            return
        try:
            self._record(module, args, kwargs, *pending)
        except Exception as error:  # a hook must never abort the host's UNet call
            self.error = error
            self._armed = False

    def _record(self, module, args, kwargs, offset, batch, height, width):
        start, end = self._target
        low, high = max(offset, start), min(offset + batch, end)
        if low >= high:
            return
        x = args[0]
        context = kwargs.get("context", args[1] if len(args) > 1 else None)
        if context is not None or x.shape[0] != batch or x.shape[1] != height * width:
            raise UnsupportedAttention(
                f"the middle block's self-attention got input {tuple(x.shape)} for a {height}x{width} grid "
                f"of {batch} rows{' with an extra context' if context is not None else ''}")
        if self.grid is not None and self.grid != (height, width):
            raise UnsupportedAttention(f"middle-block grid changed within a step: {self.grid} -> {(height, width)}")
        self.grid = (height, width)
        mass = per_key_attention_mass(module, x[low - offset:high - offset], self.chunk_elements, self.key_input)
        if high - low == end - start:  # the usual case: all target rows in one call, kept as they are
            self._mass = mass
        else:
            if self._mass is None:
                self._mass = mass.new_empty(end - start, height * width)
            self._mass[low - start:high - start] = mass
        self._filled += high - low
