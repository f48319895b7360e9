"""The adapter: the only module of sag_ext that talks to the webui (`modules.*`).

It builds the panel, starts and ends a generation's `SagSession`, and routes the webui's CFG
callbacks to the session of the step in progress. The callbacks are registered once per process
(`register_callbacks` is idempotent) and find their session through the hooked attention module of
the model in use, so no generation state lives in this module.
"""
import inspect
import logging

from modules import script_callbacks, sd_samplers_timesteps, sd_unet, shared

from .capture import MiddleBlockCapture
from .guidance import EpsSpace, X0Space
from .params import DEFAULTS, INFOTEXT_KEYS, RANGES, InvalidParams, parse_script_args
from .session import SagSession, StepInputs

TITLE = "Self-Attention Guidance"
SESSION_ATTRIBUTE = "_sag_session"
log = logging.getLogger("sd_webui_sag")

class UnsupportedModel(RuntimeError):
    """The model in use has nothing SAG can hook."""


# ---- panel -----------------------------------------------------------------------------------------

def build_ui(script):
    """The SAG accordion for one tab; returns the controls in argument order. Hints: javascript/sag_hints.js."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    def slider(name, label, step):
        low, high = RANGES[name]
        return gr.Slider(label=label, minimum=low, maximum=high, step=step, value=getattr(DEFAULTS, name),
                         elem_id=script.elem_id(name))

    with InputAccordion(DEFAULTS.enabled, label=TITLE, elem_id=script.elem_id("enabled")) as enabled:
        with gr.Row():
            scale = slider("scale", "SAG scale", 0.01)
            blur_sigma = slider("blur_sigma", "SAG blur sigma", 0.1)
        with gr.Accordion("Advanced", open=False, elem_id=script.elem_id("advanced")):
            threshold = slider("threshold", "SAG threshold", 0.01)

    script.infotext_fields = [
        (enabled, lambda params: INFOTEXT_KEYS["scale"] in params),
        (scale, INFOTEXT_KEYS["scale"]),
        (blur_sigma, INFOTEXT_KEYS["blur_sigma"]),
        (threshold, lambda params: params.get(INFOTEXT_KEYS["threshold"], DEFAULTS.threshold)),
    ]
    script.paste_field_names = [INFOTEXT_KEYS["scale"], INFOTEXT_KEYS["blur_sigma"]]
    return [enabled, scale, blur_sigma, threshold]


# ---- generation lifecycle -----------------------------------------------------------------------

def middle_attention(sd_model):
    """(middle transformer, its first attn1) of the UNet the webui runs, or UnsupportedModel."""
    if getattr(sd_unet, "current_unet", None) is not None:
        raise UnsupportedModel("an alternative UNet (e.g. TensorRT) replaces the PyTorch UNet")
    if getattr(sd_model, "cond_stage_key", None) == "edit":
        raise UnsupportedModel("instruct-pix2pix edit models are not supported")
    middle = getattr(getattr(getattr(sd_model, "model", None), "diffusion_model", None), "middle_block", None)
    if middle is None or len(middle) < 2 or not hasattr(middle[1], "transformer_blocks"):
        raise UnsupportedModel("this model has no middle-block transformer (e.g. SSD-1B, SD3)")
    return middle[1], middle[1].transformer_blocks[0].attn1


def release_model_hooks() -> None:
    """Remove any capture left on the current model (after a failed generation, or on unload)."""
    try:
        _, attn = middle_attention(shared.sd_model)
    except Exception:
        return
    MiddleBlockCapture.release(attn)


def start_generation(p, args) -> None:
    """Script.process: parse the arguments, write the infotext and attach a session to `p`."""
    end_generation(p)
    release_model_hooks()
    for key in INFOTEXT_KEYS.values():
        p.extra_generation_params.pop(key, None)  # XYZ cells share one dict
    try:
        params, messages = parse_script_args(args)
    except InvalidParams as error:
        log.warning("[SAG] Self-Attention Guidance is off for this generation: %s", error)
        return
    for message in messages:
        log.warning("[SAG] %s", message)
    if not params.enabled:
        return
    reason = _unsupported_reason()
    if reason:
        log.warning("[SAG] Self-Attention Guidance is off for this generation: %s", reason)
        return
    p.extra_generation_params.update(params.infotext())
    setattr(p, SESSION_ATTRIBUTE, SagSession(params))


def end_generation(p) -> None:
    """Script.postprocess (and before a new start): remove the hooks, forget the session."""
    session = getattr(p, SESSION_ATTRIBUTE, None)
    if session is not None:
        session.close()
        setattr(p, SESSION_ATTRIBUTE, None)


def _unsupported_reason():
    if "denoiser" not in inspect.signature(script_callbacks.CFGDenoiserParams.__init__).parameters:
        return "it needs webui 1.8 or newer (CFGDenoiserParams.denoiser is missing)"
    try:
        middle_attention(shared.sd_model)
    except UnsupportedModel as error:
        return str(error)
    return None


# ---- CFG callbacks --------------------------------------------------------------------------------

def _rows(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def _model_session():
    """The session owning the hooks on the model in use: the one whose step is in progress."""
    try:
        _, attn = middle_attention(shared.sd_model)
    except UnsupportedModel:
        return None
    return getattr(MiddleBlockCapture.attached(attn), "owner", None)


def on_cfg_denoiser(params) -> None:
    denoiser = getattr(params, "denoiser", None)
    session = getattr(getattr(denoiser, "p", None), SESSION_ATTRIBUTE, None)
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
                           repaint_mask=denoiser.nmask if denoiser.mask is not None else None, host=denoiser)


def on_cfg_denoised(params) -> None:
    session = _model_session()
    if session is None or session.step is None:
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
    """Register the CFG and unload callbacks exactly once, whatever reloads the script."""
    for register, callback in ((script_callbacks.on_cfg_denoiser, on_cfg_denoiser),
                               (script_callbacks.on_cfg_denoised, on_cfg_denoised),
                               (script_callbacks.on_cfg_after_cfg, on_cfg_after_cfg),
                               (script_callbacks.on_script_unloaded, release_model_hooks)):
        script_callbacks.remove_callbacks_for_function(callback)
        register(callback)
