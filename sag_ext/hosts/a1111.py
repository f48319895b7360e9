"""AUTOMATIC1111's webui (1.8-1.10 and its dev branch) as the host of SAG, PAG and SEG.

The UNet is the ldm/sgm one at `sd_model.model.diffusion_model`. Per denoiser call the webui fires three
callbacks: `cfg_denoiser` before the UNet calls (its batch has the cond rows first and the B uncond rows
last, in one call, in chunks, or with a separate uncond call), `cfg_denoised` after them (x0 for
k-diffusion samplers, eps for the timestep samplers) and `cfg_after_cfg` on the CFG result. SAG's pass
runs over the uncond rows, PAG's and SEG's (one pass for both) over the cond rows, each in `cfg_denoised`
with the webui's own conditioning. The callbacks find their sessions through the hooks on the model in
use, so the adapter holds no generation state.
"""
import functools
import inspect
from types import SimpleNamespace

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..core.capture import LastRowsOfStep, MiddleBlockCapture, middle_block_attention
from ..core.guidance import EpsSpace, X0Space
from ..core.perturbation import PerturbationHooks
from ..core.perturbed import PerturbedSession
from ..core.session import SagSession
from ..ui import register_once
from .rows import row_count, with_rows_repeated
from .tiled_diffusion import SagInTiledDiffusion, tiled_diffusion, why_not_per_tile


# the infotext keys other PAG and SEG implementations write when they are on: sd-webui-incantations'
OTHER_IMPLEMENTATIONS = {"pag": {"PAG Active": "the Perturbed-Attention Guidance of sd-webui-incantations"},
                         "seg": {"SEG Active": "the Smoothed Energy Guidance of sd-webui-incantations"}}
# those whose attention change acts on every UNet call of a step (our passes too, taking their rows for a
# cond/uncond pair): incantations' SEG blurs the query of the second half of each call's rows
CHANGES_EVERY_CALL = {"SEG Active": "the Smoothed Energy Guidance of sd-webui-incantations"}


class UnsupportedModel(RuntimeError):
    """The model in use has nothing SAG can hook."""


@dataclass
class StepRows:
    """What the adapter keeps of a step for a pass: the inputs of the rows it runs over (SAG: uncond, PAG
    and SEG: cond), the conditionings and the CFG denoiser."""

    x: torch.Tensor
    sigma: torch.Tensor
    image_cond: torch.Tensor
    text_cond: Any
    text_uncond: Any
    space: Any
    repaint_mask: Optional[torch.Tensor]
    denoiser: Any
    out_uncond: Optional[torch.Tensor] = None  # the uncond rows' output, for PAG's and SEG's snf rescale
    tiles: Optional[SagInTiledDiffusion] = None  # SAG inside Tiled Diffusion's tiles
    carried: Optional[slice] = None  # where the step's batch holds its rows


class A1111Adapter:
    """SAG in one webui. `webui` holds what the adapter reads of it: the modules `shared` (the model in use),
    `sd_unet` and `script_callbacks`, and the timestep samplers' denoiser class `CFGDenoiserTimesteps`.
    `adapter()` gathers the webui's own."""

    reads_forge_infotext = True  # no built-in SAG here: Forge's `sag_*` infotext keys restore ours

    def __init__(self, webui):
        self.webui = webui

    def unet(self):
        """The UNet the webui runs, or UnsupportedModel."""
        sd_model = self.webui.shared.sd_model
        if getattr(self.webui.sd_unet, "current_unet", None) is not None:
            raise UnsupportedModel("an alternative UNet (e.g. TensorRT) replaces the PyTorch UNet")
        if getattr(sd_model, "cond_stage_key", None) == "edit":
            raise UnsupportedModel("instruct-pix2pix edit models are not supported")
        unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
        if middle_block_attention(unet) is None:
            raise UnsupportedModel("this model has no middle-block transformer (e.g. SSD-1B, SD3)")
        return unet

    def release_model_hooks(self) -> None:
        """Remove any hooks left on the current model (after a failed generation, or on unload)."""
        try:
            unet = self.unet()
        except Exception:
            return
        MiddleBlockCapture.release(middle_block_attention(unet)[1])
        PerturbationHooks.release(unet)
        SagInTiledDiffusion.release(unet)

    def before_sampling(self, p) -> None:
        """Script.process_before_every_sampling, which this webui does not call: its callbacks do it all."""

    def unsupported_reason(self):
        """Why SAG cannot run on this webui and model, or None."""
        if "denoiser" not in inspect.signature(self.webui.script_callbacks.CFGDenoiserParams.__init__).parameters:
            return "it needs webui 1.8 or newer (CFGDenoiserParams.denoiser is missing)"
        try:
            self.unet()
        except UnsupportedModel as error:
            return str(error)
        return None

    # ---- CFG callbacks ------------------------------------------------------------------------------

    def on_cfg_denoiser(self, params) -> None:
        denoiser = getattr(params, "denoiser", None)
        p = getattr(denoiser, "p", None)
        sag, perturbed = SagSession.of(p), PerturbedSession.of(p)
        try:
            unet = self.unet()
        except UnsupportedModel as error:
            for session in (sag, perturbed):
                if session is not None:
                    session.stop(str(error))
            return
        SagInTiledDiffusion.release(unet)  # a step's own, left by a call that failed
        if sag is None or not sag.active:  # not ours, or left by a generation that never finished
            MiddleBlockCapture.release(middle_block_attention(unet)[1])
        if perturbed is None or not perturbed.active:
            PerturbationHooks.release(unet)
        if not any(session is not None and session.active for session in (sag, perturbed)):
            return
        timesteps = isinstance(denoiser, self.webui.CFGDenoiserTimesteps)
        count = row_count(params.text_uncond)
        progress = denoiser.step / max(denoiser.total_steps, 1)
        hires_pass = bool(getattr(p, "is_hr_pass", False))

        def step_rows(rows: slice):
            return StepRows(params.x[rows], params.sigma[rows], params.image_cond[rows], params.text_cond,
                            params.text_uncond, EpsSpace(denoiser.alphas) if timesteps else X0Space(),
                            denoiser.nmask if denoiser.mask is not None else None, denoiser)

        if perturbed is not None and perturbed.active:
            perturbed.step_aside_for_others(p.extra_generation_params, OTHER_IMPLEMENTATIONS)
        for infotext_key, name in CHANGES_EVERY_CALL.items():
            if p.extra_generation_params.get(infotext_key):
                for session in (sag, perturbed):
                    if session is not None and session.active:
                        session.stop(f"{name} is on as well, and its attention change acts on every UNet call of a "
                                     "step, this extension's passes too; turn one of them off")
        if perturbed is not None and perturbed.active:  # first: its rows in the host's call change the layout
            with perturbed.guard():
                self._begin_perturbed_step(perturbed, params, unet, count, progress, hires_pass, step_rows)
        if sag is not None and sag.active:
            with sag.guard():
                tiler = tiled_diffusion(denoiser, self.webui.shared.sd_model, params.x.shape[-2:])
                if tiler is not None:
                    self._begin_sag_in_tiles(sag, tiler, params, p, unet, count, progress, hires_pass, step_rows)
                else:
                    sag.begin_step(unet, LastRowsOfStep(total=params.x.shape[0], target=count),
                                   latent_size=params.x.shape[-2:], progress=progress, hires_pass=hires_pass,
                                   host=step_rows(slice(-count, None)))

    def _begin_sag_in_tiles(self, sag, tiler, params, p, unet, count, progress, hires_pass, step_rows) -> None:
        """SAG's step inside Tiled Diffusion's tiles (tiled_diffusion.py): B carried rows before the uncond rows,
        and the hooks that run SAG in each tile call and answer them with the tile's correction."""
        shared = self.webui.shared
        reason = why_not_per_tile(tiler, p, shared.opts, shared.sd_model, params.text_cond, params.text_uncond)
        if reason:
            sag.stop(reason)
            return
        rows = step_rows(slice(-count, None))
        sag.begin_step(unet, None, latent_size=params.x.shape[-2:], progress=progress, hires_pass=hires_pass,
                       host=rows)
        if sag.step is None:
            return
        if isinstance(rows.space, EpsSpace):
            alphas = rows.denoiser.alphas.to(rows.sigma.device)[rows.sigma.long()].float()
        else:
            alphas = 1 / (1 + rows.sigma.float() ** 2)
        total = params.x.shape[0]
        rows.carried = slice(total - count, total)
        x = torch.cat([params.x[:-count], torch.zeros_like(rows.x), params.x[-count:]])
        sigma, image_cond = (with_rows_repeated(t, slice(-count, None), 1, total, at=total - count)
                             for t in (params.sigma, params.image_cond))
        text_cond = _map_cond(params.text_cond, lambda t: torch.cat([t, t[:count]]))  # the UNet never runs them
        rows.tiles = SagInTiledDiffusion(unet, sag, per_tile=total + count, carried=rows.carried, count=count,
                                         alphas=alphas)
        params.x, params.sigma, params.image_cond, params.text_cond = x, sigma, image_cond, text_cond

    @staticmethod
    def _begin_perturbed_step(perturbed, params, unet, count, progress, hires_pass, step_rows) -> None:
        """PAG's and SEG's step: its rows go into the webui's own UNet call, between the cond and the uncond
        rows (which the webui reads from the front and from the end); in chunks of B rows, or with the uncond
        in a call of its own, each call still holds whole tiles of B."""
        if not perturbed.active:
            return
        if params.x.shape[0] != 2 * count:
            perturbed.stop("AND prompts (several positive prompts per image) are not supported")
            return
        perturbed.begin_step(unet, progress=progress, hires_pass=hires_pass, host=step_rows(slice(0, count)))
        if not perturbed.wants_host_call():
            return
        add_cond_copies(params, count, perturbed.arm_host_call(tiles_before=1, tiles_after=1, tile=count))

    def _sessions_of_the_model(self):
        """(SAG's, PAG and SEG's) sessions owning the hooks on the model in use (each None if none does): those
        whose step is in progress."""
        try:
            unet = self.unet()
        except UnsupportedModel:
            return None, None
        return SagSession.owning(middle_block_attention(unet)[1]), PerturbedSession.owning(unet)

    def on_cfg_denoised(self, params) -> None:
        sag, perturbed = self._sessions_of_the_model()
        if perturbed is not None and perturbed.step is not None:  # first: the hooks are idle for SAG's pass
            rows = perturbed.step.host
            count = rows.x.shape[0]

            def perturbed_pass(x, copies):
                cond = _repeat_rows(_conds_as_used(rows.denoiser, rows.text_cond, rows.text_uncond)[0], copies)
                return params.inner_model(x, rows.sigma.repeat(copies), cond=self._condition_dict(
                    cond, _repeat_rows(rows.image_cond, copies)))

            rows.out_uncond = params.x[-count:]
            with perturbed.guard():
                if perturbed.step.in_host_call:
                    perturbed.keep_host_call_rows(params.x[count:count * (1 + len(perturbed.step.methods))])
                perturbed.end_step(rows.x, params.x[:count], rows.sigma, rows.space, perturbed_pass)
        if sag is not None and sag.step is not None:
            rows: StepRows = sag.step.host
            if rows.tiles is not None:
                rows.tiles.remove()
                with sag.guard():
                    if rows.tiles.error is not None:
                        raise rows.tiles.error
                    sag.keep_tiles_correction(params.x[rows.carried])

            def degraded_pass(x):
                uncond = _conds_as_used(rows.denoiser, rows.text_cond, rows.text_uncond)[1]
                return params.inner_model(x, rows.sigma, cond=self._condition_dict(uncond, rows.image_cond))

            with sag.guard():
                sag.end_step(rows.x, params.x[-rows.x.shape[0]:], rows.sigma, rows.space, degraded_pass,
                             rows.repaint_mask)

    def on_cfg_after_cfg(self, params) -> None:
        sag, perturbed = self._sessions_of_the_model()
        if sag is not None:
            with sag.guard():
                params.x = sag.apply(params.x)
        if perturbed is not None and perturbed.step is not None:
            rows = perturbed.step.host
            with perturbed.guard():
                params.x = perturbed.apply(params.x, rows.x, rows.sigma, rows.space, rows.out_uncond, rows.repaint_mask)

    def _condition_dict(self, text, image_cond):
        """The cond dict the webui's CFG denoiser builds for rows of `text` (a fresh one: the host mutates it)."""
        if self.webui.shared.sd_model.model.conditioning_key == "crossattn-adm":
            return {"c_crossattn": [text], "c_adm": image_cond}
        if isinstance(text, dict):
            return {**text, "c_concat": [image_cond]}
        return {"c_crossattn": [text], "c_concat": [image_cond]}

    def register_callbacks(self) -> None:
        """The sampling callbacks, registered exactly once whatever reloads the script."""
        callbacks = self.webui.script_callbacks
        register_once(callbacks, ((callbacks.on_cfg_denoiser, self.on_cfg_denoiser),
                                  (callbacks.on_cfg_denoised, self.on_cfg_denoised),
                                  (callbacks.on_cfg_after_cfg, self.on_cfg_after_cfg),
                                  (callbacks.on_script_unloaded, self.release_model_hooks)))


def _map_cond(cond, change):
    """`change(tensor)` over a conditioning: a tensor, or SDXL's dict of them, which keeps its class (the webui's
    DictWithShape, whose `shape` its CFG denoiser reads, and whose constructor takes that shape in webui 1.8
    and 1.9: the copy is made without it)."""
    if isinstance(cond, dict):
        mapped = type(cond).__new__(type(cond))
        mapped.update((key, _map_cond(value, change)) for key, value in cond.items())
        return mapped
    return change(cond)


def add_cond_copies(params, count: int, copies: int) -> None:
    """The CFG denoiser's batch (`params` of `cfg_denoiser`: B = `count` cond rows first, the uncond rows last)
    with `copies` more copies of the cond rows between them, all inputs changed or none."""
    x, sigma, image_cond = (with_rows_repeated(t, slice(0, count), copies, t.shape[0], at=count)
                            for t in (params.x, params.sigma, params.image_cond))
    text_cond = _repeat_rows(params.text_cond, 1 + copies)
    params.x, params.sigma, params.image_cond, params.text_cond = x, sigma, image_cond, text_cond


def _repeat_rows(cond, copies: int):
    """A conditioning with its rows repeated `copies` times."""
    if copies == 1:
        return cond
    return _map_cond(cond, lambda t: t.repeat(copies, *([1] * (t.ndim - 1))))


def _conds_as_used(denoiser, text_cond, text_uncond):
    """(cond, uncond) as the host's UNet call saw them: padded to one length when the host padded them."""
    if getattr(denoiser, "padded_cond_uncond_v0", False):
        return denoiser.pad_cond_uncond_v0(text_cond, text_uncond)
    if getattr(denoiser, "padded_cond_uncond", False) and hasattr(denoiser, "pad_cond_uncond"):
        return denoiser.pad_cond_uncond(text_cond, text_uncond)
    return text_cond, text_uncond


@functools.cache
def adapter() -> A1111Adapter:
    """The adapter over this webui's own modules; one per process, so that the callbacks it registered
    are recognised when the script reloads."""
    from modules import script_callbacks, sd_samplers_timesteps, sd_unet, shared

    return A1111Adapter(SimpleNamespace(shared=shared, sd_unet=sd_unet, script_callbacks=script_callbacks,
                                        CFGDenoiserTimesteps=sd_samplers_timesteps.CFGDenoiserTimesteps))
