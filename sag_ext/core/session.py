"""One generation's SAG: the capture hooks it owns, the step in progress and its correction.

A host adapter drives it once per denoiser call: `begin_step` before the UNet calls of a step,
`end_step` after them (runs the degraded pass), `apply` on the CFG result, and `end_batch` when a batch
ends. Any exception inside is caught: SAG stops for the rest of the generation with one log line and
the hooks are removed. A step where SAG has nothing to do changes nothing, and the session remembers
why for `report_unchanged`. While sampling, nothing is read back from the device: where that is known
from parameters and shapes, the step runs no pass; what depends on tensor values (an empty mask, a
non-finite pass) is decided on the device after the pass, and read once, when the batch ends.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .capture import MiddleBlockCapture, middle_block_attention
from .console import StepsAside, report_off, report_unchanged
from .guidance import (MIN_LATENT_SIDE, GaussianBlur, attention_mask, autocast_off, degraded_input, guided,
                       latent_too_small, mask_empty_by_construction)
from .params import SagParams
from .preview import BlurredShare

ATTRIBUTE = "_sag_session"  # where a host's per-generation object (the webui's `p`) holds its session


class UnexpectedPassOutput(RuntimeError):
    """The degraded pass came back in another shape than its input (another extension reshaped it)."""


class NonFiniteCorrection(RuntimeError):
    """A step's correction was inf or NaN (the degraded pass overflowed, e.g. in fp16); neither it nor a
    later one was applied."""


# Why a step changed nothing; when no step of a generation had a correction, these are the reasons given.
BLUR_ZERO = "blur sigma is 0"
SCALE_ZERO = "the scale is 0 (in a hires pass: SAG hires pass \"off\", or a hires scale of 0)"
OUTSIDE_RANGE = "steps outside SAG start..end"
LATENT_TOO_SMALL = f"the latent is smaller than {MIN_LATENT_SIDE}x{MIN_LATENT_SIDE}"
NO_UNCOND = "steps without a negative-prompt pass (CFG 1, Skip early CFG or NGMS)"
EMPTY_MASK = ("no latent position received more attention than the threshold (a 1x1 middle-block grid, "
              "e.g. SD1 at 64 px, never does; nor does a threshold above every position's attention)")


@dataclass
class Step:
    """A step whose capture is armed: its scale, and what the adapter keeps of it for its pass."""

    scale: float
    host: Any
    tiles_correction: Optional[torch.Tensor] = None  # blended by a tiling neighbour (`keep_tiles_correction`)


class SagSession(StepsAside):
    """SAG state of one generation. Never shared between generations or tabs."""

    def __init__(self, params: SagParams, collect_preview: bool = False):
        self.params = params
        self.infotext = {}  # method key -> the infotext entries it wrote (generation.drop_infotext)
        self.active = params.enabled and params.blur_sigma > 0
        self.idle_reasons = set() if params.blur_sigma > 0 else {BLUR_ZERO}  # why steps changed nothing
        self.capture: Optional[MiddleBlockCapture] = None
        self.step: Optional[Step] = None
        self.blur = GaussianBlur(params.blur_sigma)
        self.correction: Optional[tuple] = None  # (unscaled correction, scale) of the step in progress
        self.passes_finite: Optional[torch.Tensor] = None  # device bool: was every pass so far finite?
        self.corrected_steps: Optional[torch.Tensor] = None  # device int: steps whose correction reached the image
        self.degraded_passes = 0
        self.stopped = False  # turned off by an error or an unsupported input, not by its parameters
        self.collect_preview = collect_preview
        self.blurred_share = BlurredShare() if collect_preview else None
        self.previews = []  # finished preview pictures, for the host to show (add_preview)

    @staticmethod
    def of(generation) -> Optional["SagSession"]:
        """The session attached to a host's per-generation object (the webui's `p`), if SAG is on for it."""
        return getattr(generation, ATTRIBUTE, None)

    def attach_to(self, generation) -> None:
        setattr(generation, ATTRIBUTE, self)

    @staticmethod
    def detach_from(generation) -> None:
        setattr(generation, ATTRIBUTE, None)

    def stop(self, reason: str) -> None:
        """Turn SAG off for the rest of this generation, with one log line."""
        if self.active:
            report_off(SagParams.METHOD, reason)
        self.active, self.stopped = False, True
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

    @staticmethod
    def owning(attn: torch.nn.Module) -> Optional["SagSession"]:
        """The session whose capture is attached to `attn` (the one whose step is in progress), if any."""
        return getattr(MiddleBlockCapture.attached(attn), "owner", None)

    def begin_step(self, unet: torch.nn.Module, rows, latent_size: tuple, progress: float = 0.0,
                   hires_pass: bool = False, host: Any = None) -> None:
        """Before the UNet calls of a step: arm the capture on `unet` for the rows `rows` selects
        (capture.LastRowsOfStep, capture.UncondChunk).

        `progress` is the step's place in its pass's schedule (0 first, towards 1 last); `host` is what
        the adapter keeps for its pass (`self.step.host`). Steps outside the parameters' range, or with
        scale 0, do no work at all.
        """
        self.step, self.correction = None, None
        if not self.active:
            return
        scale = self.params.scale_for(hires_pass)
        idle_reason = (SCALE_ZERO if scale == 0 else OUTSIDE_RANGE if not self.params.in_range(progress)
                       else LATENT_TOO_SMALL if latent_too_small(tuple(latent_size)) else None)
        if idle_reason:
            self.idle_reasons.add(idle_reason)
            return
        transformer, attn = middle_block_attention(unet)
        if not self.owns(attn):
            self.close()
            self.capture = MiddleBlockCapture(unet, transformer, attn, owner=self)
        self.step = Step(scale, host)
        self.capture.arm(rows, latent_size)

    def end_step(self, x: torch.Tensor, out_uncond: Optional[torch.Tensor], noise_level: torch.Tensor, space,
                 degraded_pass: Callable[[torch.Tensor], torch.Tensor],
                 repaint_mask: Optional[torch.Tensor] = None) -> None:
        """After the UNet calls: mask, blur, re-noise, run `degraded_pass` and keep the scaled correction.

        `x` are the uncond rows' input and `out_uncond` the model's output for them in `space` (X0Space or
        EpsSpace) at `noise_level` (sigma or timestep); `degraded_pass(x)` runs the model once on x with
        the uncond conditioning; `repaint_mask` (img2img) limits the correction to the repainted area.
        """
        step, self.step = self.step, None
        if step is None or self.capture is None:
            return
        if step.tiles_correction is not None:
            correction = step.tiles_correction
            self.correction = (correction if repaint_mask is None else correction * repaint_mask, step.scale)
            return
        correction = self._correction(x, out_uncond, noise_level, space, degraded_pass, repaint_mask, preview=True)
        if correction is not None:
            self.correction = (correction, step.scale)

    def arm_tiles(self, rows) -> None:
        """Before one UNet call of a tiling neighbour (MultiDiffusion) over tiles of the step's image, in a step
        with SAG work: record the rows `rows` selects (their uncond rows)."""
        self.capture.arm(rows)

    def tile_correction(self, x: torch.Tensor, out_uncond: torch.Tensor, noise_level: torch.Tensor, space,
                        degraded_pass: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """After that call: SAG on each tile as on an image of its own, from its uncond rows `x` and their
        output (as `end_step`), the unscaled correction for the neighbour to blend like its own outputs
        (zeros where the tiles have nothing to correct); `keep_tiles_correction` with the blend."""
        correction = None
        if latent_too_small(tuple(x.shape[-2:])):
            self.capture.take()
            self.idle_reasons.add(LATENT_TOO_SMALL)
        else:
            correction = self._correction(x, out_uncond, noise_level, space, degraded_pass, None, preview=False)
        return torch.zeros_like(out_uncond) if correction is None else correction.to(out_uncond.dtype)

    def keep_tiles_correction(self, blended: torch.Tensor) -> None:
        """The tiles' corrections blended over the image: the step's correction (`end_step` applies it)."""
        self.step.tiles_correction = blended

    def _correction(self, x, out_uncond, noise_level, space, degraded_pass, repaint_mask, preview: bool):
        """The gated, unscaled correction of the rows `x` from the capture's record, or None where they have
        nothing to correct (the reason kept)."""
        captured = self.capture.take()
        if self.capture.error is not None:
            raise self.capture.error
        if captured is None:  # the host skipped the uncond rows this step (CFG 1, skip early CFG, NGMS)
            self.idle_reasons.add(NO_UNCOND)
            return None
        mass, grid = captured
        if mask_empty_by_construction(grid, self.params.threshold):
            self.idle_reasons.add(EMPTY_MASK)
            return None
        with autocast_off(x.device):  # SAG's own arithmetic; the degraded pass runs under the host's autocast
            mask = attention_mask(mass, grid, tuple(out_uncond.shape[-2:]), self.params.threshold)
            x0_degraded, x_degraded = degraded_input(space, x, out_uncond, noise_level, mask, self.blur)
        out_pass = degraded_pass(x_degraded)
        if out_pass.shape != x_degraded.shape:
            raise UnexpectedPassOutput(
                f"the model answered SAG's pass over {tuple(x_degraded.shape)} with {tuple(out_pass.shape)} "
                "(another extension changes the model's output to fit a batch it cached)")
        self.degraded_passes += 1
        if preview and self.blurred_share is not None:
            self.blurred_share.add(mask)
        with autocast_off(x.device):
            correction = space.correction(x0_degraded, out_uncond, out_pass.to(out_uncond.dtype))
            if repaint_mask is not None:
                correction = correction * repaint_mask
            return self._gate(correction, mask)

    def _gate(self, correction: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`correction`, or zeros where it must not reach the image, decided on the device (a host sync here
        would stall the GPU): after a non-finite pass (an fp16 overflow) no correction reaches it any more,
        and a step whose mask is empty for every row has nothing to correct (its pass is the uncond itself)."""
        finite = torch.isfinite(correction).all()
        self.passes_finite = finite if self.passes_finite is None else self.passes_finite & finite
        reaches_image = self.passes_finite & mask.any()
        self.corrected_steps = (reaches_image.int() if self.corrected_steps is None
                                else self.corrected_steps + reaches_image)
        return torch.where(reaches_image, correction, 0.0)

    def take_blurred_share(self) -> Optional[torch.Tensor]:
        """(B, H, W) in [0, 1]: the share of the last pass's SAG steps in which each latent pixel was
        blurred, or None without a preview; the next batch starts its own."""
        return None if self.blurred_share is None else self.blurred_share.take()

    def add_preview(self, picture) -> None:
        """Keep a finished preview picture for the host to show when the generation ends."""
        self.previews.append(picture)

    def apply(self, combined: torch.Tensor) -> torch.Tensor:
        """The CFG result plus this step's correction (nothing if the step had none)."""
        step_correction, self.correction = self.correction, None
        if step_correction is None:
            return combined
        correction, scale = step_correction
        return guided(combined, correction, scale)

    def end_batch(self) -> None:
        """When a batch ends (one host sync): raise NonFiniteCorrection if a pass was not finite; its step and
        all later ones were left uncorrected, so SAG steps aside."""
        if self.passes_finite is not None and not bool(self.passes_finite):
            raise NonFiniteCorrection("SAG's pass gave inf or NaN (a float16 overflow in the model?); "
                                      "that step and the later ones were left uncorrected")

    def changed_nothing(self) -> bool:
        """Whether no step got a correction: the images are exactly the SAG-off ones (one host sync)."""
        return self.corrected_steps is None or int(self.corrected_steps) == 0

    def report_unchanged(self) -> None:
        """The one console line saying why SAG changed nothing (an error that stopped it has said so already)."""
        if self.changed_nothing() and not self.stopped:
            if self.degraded_passes:  # every pass that ran was finite (else SAG stopped) and had an empty mask
                self.idle_reasons.add(EMPTY_MASK)
            report_unchanged(SagParams.METHOD, self.idle_reasons, "no sampling step reached SAG")
