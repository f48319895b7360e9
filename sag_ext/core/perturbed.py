"""PAG and SEG: their guidance equation, and one generation's state of both.

Per sampling step, for the B positive-prompt ("cond") rows x with the model's prediction D (x0):

    x0_c  = D(x; sigma, c)                        the host's own cond prediction
    x0_p  = D(x; sigma, c) with the attention change in the chosen layers (perturbation.py)
    term  = scale * (x0_c - x0_p)
    out   = CFG + rescaled(term)                  rescale 0: CFG + term

with the references' CFG rescale (pamparamm's `rescale_guidance`, after Lin et al.): `full` and
`partial` multiply the term by rescale * std(x0_c) / std(r) + (1 - rescale), r being CFG + term
(`full`) or x0_c + term (`partial`), per image; `snf` (saliency-adaptive noise fusion, Wang et al.) picks,
per position, whichever of the CFG guidance and the term stands out more: out = x0_u + snf(CFG - x0_u,
term). Everything is computed in x0 (the timestep samplers' eps converted there and back), so the
rescales mean the same in every sampler. PAG and SEG on together share one pass: its rows are x once per
method, each tile with its own change. Those rows need nothing from the host's cond/uncond call, so an
adapter may put them into that very call (`arm_host_call`), as diffusers' PAG pipelines batch them: the
launch-bound steps then cost one call, not two; where it cannot, the pass is a call of its own.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .console import report_separate_pass
from .extra_pass import ExtraPassSession, Step
from .guidance import autocast_off
from .layers import find_layers
from .perturbation import Change, PerturbationHooks


def _std(t: torch.Tensor) -> torch.Tensor:
    return t.std(dim=tuple(range(1, t.ndim)), keepdim=True)


def _blur3(t: torch.Tensor) -> torch.Tensor:
    """pamparamm's `gaussian_blur_2d(t, 3, 1)`: a 3x3 gaussian of sigma 1 with reflect padding."""
    pdf = torch.linspace(-1.0, 1.0, 3, device=t.device).square_().mul_(-0.5).exp_()  # made there: no copy
    kernel = (pdf / pdf.sum()).to(t.dtype)
    weight = (kernel[:, None] * kernel[None, :]).expand(t.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), weight, groups=t.shape[1])


def saliency_fusion(cfg_guidance: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """snf: per position, the guidance whose blurred magnitude has the larger softmax over the image."""
    b, c, h, w = term.shape

    def saliency(t):
        return torch.softmax(_blur3(t.abs()).reshape(b * c, h * w), dim=1).reshape(b, c, h, w)

    return torch.where(saliency(term) > saliency(cfg_guidance), term, cfg_guidance)


def guided(cfg: torch.Tensor, cond: torch.Tensor, perturbed: torch.Tensor, uncond: Optional[torch.Tensor],
           scale: float, rescale: float = 0.0, mode: str = "full") -> torch.Tensor:
    """The equation above on x0 tensors (B, C, H, W); `uncond` is needed by `snf` only (None: CFG + term)."""
    term = scale * (cond - perturbed)
    if mode == "snf":  # where the host ran no uncond rows (CFG 1) its uncond is zeros: CFG + term, as pamparamm's
        return cfg + term if uncond is None else torch.where(uncond.any(), uncond + saliency_fusion(cfg - uncond, term),
                                                            cfg + term)
    if rescale == 0:
        return cfg + term
    reference = (cfg if mode == "full" else cond) + term
    return cfg + term * (rescale * _std(cond) / _std(reference) + (1.0 - rescale))


class NonFinitePass(RuntimeError):
    """The perturbed pass gave inf or NaN; that step and the later ones were left unguided."""


@dataclass
class PerturbedStep(Step):
    """A step with work, whose rows may ride in the host's own UNet call."""

    in_host_call: bool = False  # the step's rows ride in the host's own UNet call
    host_call_closed: bool = False  # no more offers: the rows were put in a call, or the pass has begun
    host_call_out: Optional[torch.Tensor] = None  # their output, once that call ran


class PerturbedSession(ExtraPassSession):
    """PAG's and SEG's extra pass in one generation (either or both; one pass over the cond rows, once per
    method). Never shared between generations or tabs.

    A host adapter drives it per denoiser call: `begin_step` before the UNet calls, `end_step` after them
    (the perturbed pass), `apply` on the CFG result, `end_batch` when a batch ends. An exception inside
    turns both off for the rest of the generation, with one console line each.
    """

    ATTRIBUTE = "_perturbed_session"  # where the webui's `p` holds its PAG/SEG session
    HOOKS = PerturbationHooks
    NON_FINITE = (NonFinitePass, "the perturbed pass gave inf or NaN (a float16 overflow in the model?); that "
                                 "step and the later ones were left unguided")

    def __init__(self):
        super().__init__()
        self.changes = {}  # method key -> its perturbation.Change in the hooked UNet
        self.rows_in_host_call = True  # the adapter may put the pass's rows into the host's call (a setting)

    def add(self, params, rows_in_host_call: bool = True) -> None:
        """A method joins with `params`; `rows_in_host_call`: the setting that lets the pass's rows ride in
        the host's own call."""
        super().add(params)
        self.rows_in_host_call = rows_in_host_call

    def step_aside_for_others(self, written: dict, others: dict) -> None:
        """Turn off each method whose other implementation is on as well (never twice): `others` maps a
        method key to {infotext key it writes when on: its name}; `written` is the generation's infotext."""
        for key, implementations in others.items():
            for infotext_key, name in implementations.items():
                if key in self.methods and key not in self.stopped_methods and written.get(infotext_key):
                    self.stop(f"{name} is on as well; turn one of them off", keys={key})

    def _hook(self, unet: torch.nn.Module) -> None:
        """Hooks on the layers the methods name in `unet` (once per UNet); a method naming layers this
        model lacks steps aside."""
        if self.hooks is not None and self.hooks.unet is unet and PerturbationHooks.attached(unet) is self.hooks:
            return
        self.close()
        PerturbationHooks.release(unet)
        layers, self.changes = [], {}
        for params in self.active_methods():
            try:
                found = find_layers(unet, params.layers)
            except ValueError as error:
                self.stop(f"layers {params.layers!r}: {error}", keys={params.METHOD.key})
                continue
            layers += found
            self.changes[params.METHOD.key] = Change(params.CHANGE, frozenset(id(attn) for _, attn in found),
                                                     getattr(params, "blur_sigma", 0.0))
        if layers:
            self.hooks = PerturbationHooks(unet, layers, owner=self)

    def begin_step(self, unet: torch.nn.Module, progress: float = 0.0, hires_pass: bool = False,
                   host: Any = None) -> None:
        """Before the UNet calls of a step: which methods guide it (`progress`: the step's place in its
        pass, 0 first; steps outside a method's range or with scale 0 do no work at all)."""
        self.step, self.result, self.started = None, None, True
        if self.hooks is not None:
            self.hooks.disarm(check=False)  # a host call that raised left them armed
        if not self.active:
            return
        self._hook(unet)
        methods = self.methods_of_step(progress, hires_pass)
        if methods and self.hooks is not None:
            self.step = PerturbedStep(methods, host)

    def _changes_of_step(self) -> list:
        return [self.changes[params.METHOD.key] for params, _ in self.step.methods]

    def wants_host_call(self) -> bool:
        """Whether the step's rows may still go into the host's UNet call."""
        step = self.step
        return step is not None and self.rows_in_host_call and self.hooks is not None and not step.host_call_closed

    def arm_host_call(self, tiles_before: int, tiles_after: int, tile: int) -> int:
        """The step's rows go into the host's own UNet call (or its chunks), laid out as `tiles_before` tiles
        of `tile` host rows, one tile per method (x and the cond conditioning, repeated), `tiles_after` host
        tiles: the hooks change just ours. Returns the number of our tiles; `keep_host_call_rows` after."""
        changes = self._changes_of_step()
        self.hooks.arm([None] * tiles_before + changes + [None] * tiles_after, tile)
        self.step.in_host_call = self.step.host_call_closed = True
        return len(changes)

    def keep_host_call_rows(self, out: torch.Tensor) -> None:
        """After the host's call: `out`, the output of our tiles. UnsupportedPerturbation if no chosen layer ran."""
        self.hooks.disarm()
        self.step.host_call_out = out

    def abandon_host_call(self, reason: str) -> None:
        """The host's call ran without our rows after all (`reason`): this step's pass and the later ones are
        calls of their own, said in one console line."""
        self.hooks.disarm(check=False)
        self.step.in_host_call, self.step.host_call_closed = False, True
        if self.rows_in_host_call:
            self.rows_in_host_call = False
            report_separate_pass([params.METHOD for params in self.active_methods()], reason)

    def end_step(self, x: torch.Tensor, out_cond: torch.Tensor, noise_level: torch.Tensor, space,
                 perturbed_pass: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None) -> None:
        """After the host's UNet calls: the perturbed x0 of each method, from our rows in the host's call or
        else from one pass over x repeated once per method (`perturbed_pass(x_rows, copies)` runs the model on
        them with the cond conditioning repeated `copies` times), each copy with its method's change."""
        step = self.step
        if step is None:
            return
        copies, step.host_call_closed = len(step.methods), True
        if step.host_call_out is not None:
            out = step.host_call_out
        else:
            if step.in_host_call:
                raise RuntimeError("the webui's UNet call returned without the rows put into it")
            with self.hooks.armed(self._changes_of_step(), tile=x.shape[0]):
                out = perturbed_pass(x.repeat(copies, *([1] * (x.ndim - 1))) if copies > 1 else x, copies)
        if out.shape[0] != x.shape[0] * copies or out.shape[1:] != x.shape[1:]:
            raise RuntimeError(f"the model answered the perturbed pass over {copies * x.shape[0]} rows with "
                               f"{tuple(out.shape)}")
        with autocast_off(x.device):
            cond = space.pred_x0(x, out_cond, noise_level)
            perturbed = [space.pred_x0(x, part.to(out_cond.dtype), noise_level) for part in out.chunk(copies)]
            self.note_pass(torch.isfinite(out).all())
        self.result = (cond, perturbed)

    def apply(self, combined: torch.Tensor, x: torch.Tensor, noise_level: torch.Tensor, space,
              out_uncond: Optional[torch.Tensor] = None, repaint_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The CFG result `combined` (in `space`) guided by this step's methods, in their order; nothing
        without a pass. `out_uncond` (the uncond rows' output, None where the host ran none) is for snf."""
        step, result = self.step, self.result
        self.step, self.result = None, None
        if step is None or result is None:
            return combined
        cond, perturbed = result
        with autocast_off(x.device):
            cfg = start = space.pred_x0(x, combined, noise_level)
            uncond = None if out_uncond is None else space.pred_x0(x, out_uncond, noise_level)
            for (params, scale), rows in zip(step.methods, perturbed):
                cfg = guided(cfg, cond, rows, uncond, scale, params.rescale, params.rescale_mode)
                self.count_guided(params.METHOD.key, self.passes_finite)
            cfg = torch.where(self.passes_finite, cfg, start)  # after a non-finite pass, no guidance any more
            if repaint_mask is not None:
                cfg = start + (cfg - start) * repaint_mask
            return space.output_from_x0(x, cfg, noise_level).to(combined.dtype)
