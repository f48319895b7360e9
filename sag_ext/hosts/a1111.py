"""AUTOMATIC1111's webui (1.8-1.10 and its dev branch) as SAG's host.

The UNet is the ldm/sgm one at `sd_model.model.diffusion_model`. Per denoiser call the webui fires three
callbacks: `cfg_denoiser` before the UNet calls (its batch has the cond rows first and the B uncond rows
last, in one call, in chunks, or with a separate uncond call), `cfg_denoised` after them (x0 for
k-diffusion samplers, eps for the timestep samplers) and `cfg_after_cfg` on the CFG result. The callbacks
find their session through the hooked attention module of the model in use, so the adapter holds no
generation state.
"""
import functools
import inspect
from types import SimpleNamespace

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..core.capture import LastRowsOfStep, MiddleBlockCapture, middle_block_attention
from ..core.guidance import EpsSpace, X0Space
from ..core.session import SagSession
from ..ui import register_once


class UnsupportedModel(RuntimeError):
    """The model in use has nothing SAG can hook."""


@dataclass
class UncondRows:
    """What the adapter keeps of a step for SAG's pass: the uncond rows' inputs and the CFG denoiser."""

    x: torch.Tensor
    sigma: torch.Tensor
    image_cond: torch.Tensor
    text_cond: Any
    text_uncond: Any
    space: Any
    repaint_mask: Optional[torch.Tensor]
    denoiser: Any


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
        """Remove any capture left on the current model (after a failed generation, or on unload)."""
        try:
            _, attn = middle_block_attention(self.unet())
        except Exception:
            return
        MiddleBlockCapture.release(attn)

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

    def _model_session(self):
        """The session owning the hooks on the model in use: the one whose step is in progress."""
        try:
            _, attn = middle_block_attention(self.unet())
        except UnsupportedModel:
            return None
        return SagSession.owning(attn)

    def on_cfg_denoiser(self, params) -> None:
        denoiser = getattr(params, "denoiser", None)
        p = getattr(denoiser, "p", None)
        session = SagSession.of(p)
        try:
            unet = self.unet()
        except UnsupportedModel as error:
            if session is not None:
                session.stop(str(error))
            return
        if session is None or not session.active:
            MiddleBlockCapture.release(middle_block_attention(unet)[1])  # not ours, or left by a generation that never finished
            return
        with session.guard():
            timesteps = isinstance(denoiser, self.webui.CFGDenoiserTimesteps)
            count = _rows(params.text_uncond)
            rows = UncondRows(params.x[-count:], params.sigma[-count:], params.image_cond[-count:],
                              params.text_cond, params.text_uncond,
                              EpsSpace(denoiser.alphas) if timesteps else X0Space(),
                              denoiser.nmask if denoiser.mask is not None else None, denoiser)
            session.begin_step(unet, LastRowsOfStep(total=params.x.shape[0], target=count),
                               latent_size=params.x.shape[-2:], progress=denoiser.step / max(denoiser.total_steps, 1),
                               hires_pass=bool(getattr(p, "is_hr_pass", False)), host=rows)

    def on_cfg_denoised(self, params) -> None:
        session = self._model_session()
        if session is None or session.step is None:
            return
        rows: UncondRows = session.step.host

        def degraded_pass(x):
            uncond = _uncond_as_used(rows.denoiser, rows.text_cond, rows.text_uncond)
            return params.inner_model(x, rows.sigma, cond=self._condition_dict(uncond, rows.image_cond))

        with session.guard():
            session.end_step(rows.x, params.x[-rows.x.shape[0]:], rows.sigma, rows.space, degraded_pass,
                             rows.repaint_mask)

    def on_cfg_after_cfg(self, params) -> None:
        session = self._model_session()
        if session is not None:
            with session.guard():
                params.x = session.apply(params.x)

    def _condition_dict(self, uncond, image_cond):
        """The cond dict the webui's CFG denoiser builds for uncond rows (a fresh one: the host mutates it)."""
        if self.webui.shared.sd_model.model.conditioning_key == "crossattn-adm":
            return {"c_crossattn": [uncond], "c_adm": image_cond}
        if isinstance(uncond, dict):
            return {**uncond, "c_concat": [image_cond]}
        return {"c_crossattn": [uncond], "c_concat": [image_cond]}

    def register_callbacks(self) -> None:
        """The sampling callbacks, registered exactly once whatever reloads the script."""
        callbacks = self.webui.script_callbacks
        register_once(callbacks, ((callbacks.on_cfg_denoiser, self.on_cfg_denoiser),
                                  (callbacks.on_cfg_denoised, self.on_cfg_denoised),
                                  (callbacks.on_cfg_after_cfg, self.on_cfg_after_cfg),
                                  (callbacks.on_script_unloaded, self.release_model_hooks)))


def _rows(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def _uncond_as_used(denoiser, text_cond, text_uncond):
    """The uncond the host's UNet call saw: padded to the cond's length when the host padded it."""
    if getattr(denoiser, "padded_cond_uncond_v0", False):
        return denoiser.pad_cond_uncond_v0(text_cond, text_uncond)[1]
    if getattr(denoiser, "padded_cond_uncond", False) and hasattr(denoiser, "pad_cond_uncond"):
        return denoiser.pad_cond_uncond(text_cond, text_uncond)[1]
    return text_uncond


@functools.cache
def adapter() -> A1111Adapter:
    """The adapter over this webui's own modules; one per process, so that the callbacks it registered
    are recognised when the script reloads."""
    from modules import script_callbacks, sd_samplers_timesteps, sd_unet, shared

    return A1111Adapter(SimpleNamespace(shared=shared, sd_unet=sd_unet, script_callbacks=script_callbacks,
                                        CFGDenoiserTimesteps=sd_samplers_timesteps.CFGDenoiserTimesteps))
