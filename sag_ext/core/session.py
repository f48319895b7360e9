"""One generation's SAG: the extra pass (extra_pass.py) over the uncond rows, from the capture hooks it owns.

A host adapter drives it once per denoiser call: `begin_step` before the UNet calls of a step,
`end_step` after them (runs the degraded pass), `apply` on the CFG result, and `end_batch` when a batch
ends. Any exception inside is caught: SAG stops for the rest of the generation with one log line and
the hooks are removed. A step where SAG has nothing to do changes nothing, and the session remembers
why for the report at the end. While sampling, nothing is read back from the device: where that is known
from parameters and shapes, the step runs no pass; what depends on tensor values (an empty mask, a
non-finite pass) is decided on the device after the pass, and read once, when the batch ends.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .capture import MiddleBlockCapture, middle_block_attention
from .extra_pass import ExtraPassSession, Step
from .guidance import (MIN_LATENT_SIDE, GaussianBlur, attention_mask, autocast_off, degraded_input, guided,
                       latent_too_small, mask_empty_by_construction)
from .params import SagParams
from .preview import BlurredShare


class UnexpectedPassOutput(RuntimeError):
    """The degraded pass came back in another shape than its input (another extension reshaped it)."""


class NonFiniteCorrection(RuntimeError):
    """A step's correction was inf or NaN (the degraded pass overflowed, e.g. in fp16); neither it nor a
    later one was applied."""


KEY = SagParams.METHOD.key  # SAG's entries in the session's per-method records

# Why a step changed nothing; when no step of a generation had a correction, these are the reasons given.
BLUR_ZERO = "blur sigma is 0"
LATENT_TOO_SMALL = f"the latent is smaller than {MIN_LATENT_SIDE}x{MIN_LATENT_SIDE}"
NO_UNCOND = "steps without a negative-prompt pass (CFG 1, Skip early CFG or NGMS)"
EMPTY_MASK = ("no latent position received more attention than the threshold (a 1x1 middle-block grid, "
              "e.g. SD1 at 64 px, never does; nor does a threshold above every position's attention)")


@dataclass
class SagStep(Step):
    """A step whose capture is armed."""

    tiles_correction: Optional[torch.Tensor] = None  # blended by a tiling neighbour (`keep_tiles_correction`)

    @property
    def scale(self) -> float:
        return self.methods[0][1]


class SagSession(ExtraPassSession):
    """SAG's extra pass in one generation. Never shared between generations or tabs."""

    ATTRIBUTE = "_sag_session"  # where a host's per-generation object (the webui's `p`) holds its session
    HOOKS = MiddleBlockCapture
    NON_FINITE = (NonFiniteCorrection, "SAG's pass gave inf or NaN (a float16 overflow in the model?); "
                                       "that step and the later ones were left uncorrected")
    SCALE_ZERO = "the scale is 0 (in a hires pass: SAG hires pass \"off\", or a hires scale of 0)"
    OUTSIDE_RANGE = "steps outside SAG start..end"

    def __init__(self, params: Optional[SagParams] = None, collect_preview: bool = False):
        super().__init__()
        self.degraded_passes = 0
        self.blur, self.blurred_share = None, None
        if params is not None:
            self.add(params, collect_preview)

    def add(self, params: SagParams, collect_preview: bool = False) -> None:
        """SAG joins with `params`; `collect_preview`: keep the share of steps each latent pixel was blurred in."""
        super().add(params)
        self.blur = GaussianBlur(params.blur_sigma)
        self.blurred_share = BlurredShare() if collect_preview else None
        if params.blur_sigma <= 0:
            self.rest(params, BLUR_ZERO)

    @property
    def params(self) -> Optional[SagParams]:
        return self.methods.get(KEY)

    @property
    def collect_preview(self) -> bool:
        return self.blurred_share is not None

    def owns(self, attn: torch.nn.Module) -> bool:
        return self.hooks is not None and self.hooks.is_attached_to(attn)

    def begin_step(self, unet: torch.nn.Module, rows, latent_size: tuple, progress: float = 0.0,
                   hires_pass: bool = False, host: Any = None) -> None:
        """Before the UNet calls of a step: arm the capture on `unet` for the rows `rows` selects
        (capture.LastRowsOfStep, capture.UncondChunk).

        `progress` is the step's place in its pass's schedule (0 first, towards 1 last); `host` is what
        the adapter keeps for its pass (`self.step.host`). Steps outside the parameters' range, or with
        scale 0, do no work at all.
        """
        self.step, self.result = None, None
        if not self.active:
            return
        methods = self.methods_of_step(progress, hires_pass)
        if not methods:
            return
        if latent_too_small(tuple(latent_size)):
            self.idle_reasons[KEY].add(LATENT_TOO_SMALL)
            return
        transformer, attn = middle_block_attention(unet)
        if not self.owns(attn):
            self.close()
            self.hooks = MiddleBlockCapture(unet, transformer, attn, owner=self)
        self.step = SagStep(methods, host)
        self.hooks.arm(rows, latent_size)

    def end_step(self, x: torch.Tensor, out_uncond: Optional[torch.Tensor], noise_level: torch.Tensor, space,
                 degraded_pass: Callable[[torch.Tensor], torch.Tensor],
                 repaint_mask: Optional[torch.Tensor] = None) -> None:
        """After the UNet calls: mask, blur, re-noise, run `degraded_pass` and keep the scaled correction.

        `x` are the uncond rows' input and `out_uncond` the model's output for them in `space` (X0Space or
        EpsSpace) at `noise_level` (sigma or timestep); `degraded_pass(x)` runs the model once on x with
        the uncond conditioning; `repaint_mask` (img2img) limits the correction to the repainted area.
        """
        step, self.step = self.step, None
        if step is None or self.hooks is None:
            return
        if step.tiles_correction is not None:
            correction = step.tiles_correction
            self.result = (correction if repaint_mask is None else correction * repaint_mask, step.scale)
            return
        correction = self._correction(x, out_uncond, noise_level, space, degraded_pass, repaint_mask, preview=True)
        if correction is not None:
            self.result = (correction, step.scale)

    def arm_tiles(self, rows) -> None:
        """Before one UNet call of a tiling neighbour (MultiDiffusion) over tiles of the step's image, in a step
        with SAG work: record the rows `rows` selects (their uncond rows)."""
        self.hooks.arm(rows)

    def tile_correction(self, x: torch.Tensor, out_uncond: torch.Tensor, noise_level: torch.Tensor, space,
                        degraded_pass: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """After that call: SAG on each tile as on an image of its own, from its uncond rows `x` and their
        output (as `end_step`), the unscaled correction for the neighbour to blend like its own outputs
        (zeros where the tiles have nothing to correct); `keep_tiles_correction` with the blend."""
        correction = None
        if latent_too_small(tuple(x.shape[-2:])):
            self.hooks.take()
            self.idle_reasons[KEY].add(LATENT_TOO_SMALL)
        else:
            correction = self._correction(x, out_uncond, noise_level, space, degraded_pass, None, preview=False)
        return torch.zeros_like(out_uncond) if correction is None else correction.to(out_uncond.dtype)

    def keep_tiles_correction(self, blended: torch.Tensor) -> None:
        """The tiles' corrections blended over the image: the step's correction (`end_step` applies it)."""
        self.step.tiles_correction = blended

    def _correction(self, x, out_uncond, noise_level, space, degraded_pass, repaint_mask, preview: bool):
        """The gated, unscaled correction of the rows `x` from the capture's record, or None where they have
        nothing to correct (the reason kept)."""
        captured = self.hooks.take()
        if self.hooks.error is not None:
            raise self.hooks.error
        if captured is None:  # the host skipped the uncond rows this step (CFG 1, skip early CFG, NGMS)
            self.idle_reasons[KEY].add(NO_UNCOND)
            return None
        mass, grid = captured
        if mask_empty_by_construction(grid, self.params.threshold):
            self.idle_reasons[KEY].add(EMPTY_MASK)
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
        self.note_pass(torch.isfinite(correction).all())
        reaches_image = self.passes_finite & mask.any()
        self.count_guided(KEY, reaches_image)
        return torch.where(reaches_image, correction, 0.0)

    def take_preview(self) -> Optional[torch.Tensor]:
        """(B, H, W) in [0, 1]: the share of the last pass's SAG steps in which each latent pixel was
        blurred, or None without a preview; the next batch starts its own."""
        return None if self.blurred_share is None else self.blurred_share.take()

    def apply(self, combined: torch.Tensor) -> torch.Tensor:
        """The CFG result plus this step's correction (nothing if the step had none)."""
        step_correction, self.result = self.result, None
        if step_correction is None:
            return combined
        correction, scale = step_correction
        return guided(combined, correction, scale)

    def unchanged_reasons(self, key: str) -> set:
        if self.degraded_passes:  # every pass that ran was finite (else SAG stopped) and had an empty mask
            self.idle_reasons[key].add(EMPTY_MASK)
        return self.idle_reasons[key]
