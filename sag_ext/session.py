"""One generation's SAG: the capture hooks it owns, the step in progress and its correction.

The host adapter drives it once per denoiser call: `begin_step` before the UNet calls of a step,
`end_step` after them (runs the degraded pass), `apply` on the CFG result. Any exception inside is
caught: SAG stops for the rest of the generation with one log line and the hooks are removed.
"""
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .capture import MiddleBlockCapture
from .guidance import attention_mask, degrade, latent_too_small
from .params import SagParams

log = logging.getLogger("sd_webui_sag")


@dataclass
class StepInputs:
    """The uncond rows of one step, as the host laid them out, plus the host's own conditioning objects."""

    x: torch.Tensor
    sigma: torch.Tensor
    image_cond: torch.Tensor
    text_cond: Any
    text_uncond: Any
    space: Any
    repaint_mask: Optional[torch.Tensor]
    host: Any  # the adapter's handle for this step (the webui's CFG denoiser)


class SagSession:
    """SAG state of one generation. Never shared between generations or tabs."""

    def __init__(self, params: SagParams, chunk_elements: Optional[int] = None):
        self.params = params
        self.active = params.enabled and params.scale != 0 and params.blur_sigma > 0
        self.capture: Optional[MiddleBlockCapture] = None
        self.step: Optional[StepInputs] = None
        self.correction: Optional[torch.Tensor] = None
        self.degraded_passes = 0
        self._chunk_kwargs = {} if chunk_elements is None else {"chunk_elements": chunk_elements}

    @contextlib.contextmanager
    def guard(self):
        """Run host-facing work; an exception stops SAG for this generation instead of reaching the host."""
        try:
            yield
        except Exception as error:
            self.stop(f"{type(error).__name__}: {error}")

    def stop(self, reason: str) -> None:
        """Turn SAG off for the rest of this generation, with one log line."""
        if self.active:
            log.warning("[SAG] Self-Attention Guidance is off for this generation: %s", reason)
        self.active = False
        self.close()

    def close(self) -> None:
        """Remove the hooks and drop per-step tensors; safe to call more than once."""
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
        self.step = None
        self.correction = None

    def owns(self, attn: torch.nn.Module) -> bool:
        return self.capture is not None and self.capture.is_attached_to(attn)

    def begin_step(self, transformer: torch.nn.Module, attn: torch.nn.Module, x_in: torch.Tensor,
                   sigma_in: torch.Tensor, image_cond_in: torch.Tensor, text_cond: Any, text_uncond: Any,
                   uncond_rows: int, space, repaint_mask: Optional[torch.Tensor] = None, host: Any = None) -> None:
        """Before the UNet calls of a step: keep the uncond rows (the last `uncond_rows` of the layout).

        `space` is the model output's space (X0Space or EpsSpace); `repaint_mask` (img2img) limits the
        correction to the repainted area.
        """
        self.step, self.correction = None, None
        if not self.active or latent_too_small(tuple(x_in.shape[-2:])):
            return
        if not self.owns(attn):
            self.close()
            self.capture = MiddleBlockCapture(transformer, attn, owner=self, **self._chunk_kwargs)
        self.step = StepInputs(x_in[-uncond_rows:], sigma_in[-uncond_rows:], image_cond_in[-uncond_rows:],
                               text_cond, text_uncond, space, repaint_mask, host)
        self.capture.arm(total_rows=x_in.shape[0], target_rows=uncond_rows)

    def end_step(self, x_out: torch.Tensor, degraded_pass: Callable[[torch.Tensor, StepInputs], torch.Tensor]) -> None:
        """After the UNet calls: mask, blur, re-noise, run `degraded_pass` and keep the scaled correction.

        `x_out` is the host's output batch (uncond rows last); `degraded_pass(x, step)` runs the model
        once on x with the uncond conditioning of `step`.
        """
        step, self.step = self.step, None
        if step is None or self.capture is None:
            return
        captured = self.capture.take()
        if self.capture.error is not None:
            raise self.capture.error
        if captured is None:  # the host skipped the uncond rows this step (CFG 1, skip early CFG, NGMS)
            return
        mass, grid = captured
        space = step.space
        out_uncond = x_out[-step.x.shape[0]:]
        x0 = space.pred_x0(step.x, out_uncond, step.sigma)
        mask = attention_mask(mass, grid, tuple(x0.shape[-2:]), self.params.threshold)
        degraded = degrade(x0, mask, self.params.blur_sigma)
        out_pass = degraded_pass(space.renoise(step.x, x0, degraded, step.sigma), step)
        self.degraded_passes += 1
        correction = space.correction(degraded, out_uncond, out_pass, step.x, step.sigma) * self.params.scale
        self.correction = correction if step.repaint_mask is None else correction * step.repaint_mask

    def apply(self, combined: torch.Tensor) -> torch.Tensor:
        """The CFG result plus this step's correction (nothing if the step had none)."""
        correction, self.correction = self.correction, None
        return combined if correction is None else combined + correction.to(combined.dtype)
