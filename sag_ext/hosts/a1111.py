"""AUTOMATIC1111's webui (1.8-1.10 and its dev branch) as SAG's host.

The UNet is the ldm/sgm one at `sd_model.model.diffusion_model`. Per denoiser call the webui fires three
callbacks: `cfg_denoiser` before the UNet calls (its batch has the cond rows first and the B uncond rows
last, in one call, in chunks, or with a separate uncond call), `cfg_denoised` after them (x0 for
k-diffusion samplers, eps for the timestep samplers) and `cfg_after_cfg` on the CFG result. Callbacks
are registered once per process and find their session through the hooked attention module of the
model in use, so no generation state lives in this module.
"""
import inspect

from modules import script_callbacks, sd_samplers_timesteps, sd_unet, shared
from modules.hypernetworks import hypernetwork

from ..core.capture import MiddleBlockCapture, middle_block_attention
from ..core.guidance import EpsSpace, X0Space
from ..core.session import SagSession, StepInputs
from ..generation import session_of
from ..ui import register_once


class UnsupportedModel(RuntimeError):
    """The model in use has nothing SAG can hook."""


def middle_attention(sd_model):
    """(middle transformer, its first attn1) of the UNet the webui runs, or UnsupportedModel."""
    if getattr(sd_unet, "current_unet", None) is not None:
        raise UnsupportedModel("an alternative UNet (e.g. TensorRT) replaces the PyTorch UNet")
    if getattr(sd_model, "cond_stage_key", None) == "edit":
        raise UnsupportedModel("instruct-pix2pix edit models are not supported")
    found = middle_block_attention(getattr(getattr(sd_model, "model", None), "diffusion_model", None))
    if found is None:
        raise UnsupportedModel("this model has no middle-block transformer (e.g. SSD-1B, SD3)")
    return found


def release_model_hooks() -> None:
    """Remove any capture left on the current model (after a failed generation, or on unload)."""
    try:
        _, attn = middle_attention(shared.sd_model)
    except Exception:
        return
    MiddleBlockCapture.release(attn)


def unsupported_reason():
    """Why SAG cannot run on this webui and model, or None."""
    if "denoiser" not in inspect.signature(script_callbacks.CFGDenoiserParams.__init__).parameters:
        return "it needs webui 1.8 or newer (CFGDenoiserParams.denoiser is missing)"
    try:
        middle_attention(shared.sd_model)
    except UnsupportedModel as error:
        return str(error)
    return None


def self_attention_keys(x):
    """The input of a self-attention's `to_k` in the webui's attention forwards: x through the loaded
    hypernetworks (x itself when none is loaded or none has a layer of x's width)."""
    return hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, x)[0]


# ---- CFG callbacks --------------------------------------------------------------------------------

def _rows(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def _model_session():
    """The session owning the hooks on the model in use: the one whose step is in progress."""
    try:
        _, attn = middle_attention(shared.sd_model)
    except UnsupportedModel:
        return None
    return SagSession.owning(attn)


def on_cfg_denoiser(params) -> None:
    denoiser = getattr(params, "denoiser", None)
    p = getattr(denoiser, "p", None)
    session = session_of(p)
    try:
        transformer, attn = middle_attention(shared.sd_model)
    except UnsupportedModel as error:
        if session is not None:
            session.stop(str(error))
        return
    if session is None or not session.active:
        MiddleBlockCapture.release(attn)  # not ours, or left by a generation that never finished
        return
    with session.guard():
        timesteps = isinstance(denoiser, sd_samplers_timesteps.CFGDenoiserTimesteps)
        session.begin_step(transformer, attn, params.x, params.sigma, params.image_cond, params.text_cond,
                           params.text_uncond, uncond_rows=_rows(params.text_uncond),
                           space=EpsSpace(denoiser.alphas) if timesteps else X0Space(),
                           progress=denoiser.step / max(denoiser.total_steps, 1),
                           hires_pass=bool(getattr(p, "is_hr_pass", False)),
                           repaint_mask=denoiser.nmask if denoiser.mask is not None else None, host=denoiser)


def on_cfg_denoised(params) -> None:
    session = _model_session()
    if session is None:
        return

    def degraded_pass(x, step: StepInputs):
        uncond = _uncond_as_used(step.host, step.text_cond, step.text_uncond)
        return params.inner_model(x, step.sigma, cond=_condition_dict(uncond, step.image_cond))

    with session.guard():
        session.end_step(params.x, degraded_pass)


def on_cfg_after_cfg(params) -> None:
    session = _model_session()
    if session is not None:
        with session.guard():
            params.x = session.apply(params.x)


def _condition_dict(uncond, image_cond):
    """The cond dict the webui's CFG denoiser builds for uncond rows (a fresh one: the host mutates it)."""
    if shared.sd_model.model.conditioning_key == "crossattn-adm":
        return {"c_crossattn": [uncond], "c_adm": image_cond}
    if isinstance(uncond, dict):
        return {**uncond, "c_concat": [image_cond]}
    return {"c_crossattn": [uncond], "c_concat": [image_cond]}


def _uncond_as_used(denoiser, text_cond, text_uncond):
    """The uncond the host's UNet call saw: padded to the cond's length when the host padded it."""
    if getattr(denoiser, "padded_cond_uncond_v0", False):
        return denoiser.pad_cond_uncond_v0(text_cond, text_uncond)[1]
    if getattr(denoiser, "padded_cond_uncond", False) and hasattr(denoiser, "pad_cond_uncond"):
        return denoiser.pad_cond_uncond(text_cond, text_uncond)[1]
    return text_uncond


def register_callbacks() -> None:
    """The sampling callbacks, registered exactly once whatever reloads the script."""
    register_once(((script_callbacks.on_cfg_denoiser, on_cfg_denoiser),
                   (script_callbacks.on_cfg_denoised, on_cfg_denoised),
                   (script_callbacks.on_cfg_after_cfg, on_cfg_after_cfg),
                   (script_callbacks.on_script_unloaded, release_model_hooks)))
