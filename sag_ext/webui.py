"""The adapter: the only module of sag_ext that talks to the webui (`modules.*`).

It builds the panel and settings, starts and ends a generation's `SagSession`, and routes the
webui's CFG callbacks to the session of the step in progress. Callbacks are registered once per
process (`register_callbacks` is idempotent) and find their session through the hooked attention
module of the model in use, so no generation state lives in this module.
"""
import dataclasses
import inspect
import logging

from PIL import Image

from modules import script_callbacks, scripts, sd_samplers_timesteps, sd_unet, shared
from modules.hypernetworks import hypernetwork

from . import api, xyz
from .capture import MiddleBlockCapture
from .guidance import EpsSpace, X0Space
from .params import (ARG_NAMES, DEFAULTS, HIRES_MODES, INFOTEXT_KEYS, RANGES, InvalidParams, PasteField,
                     from_infotext, params_from, parse_script_args)
from .preview import overlay
from .session import SagSession, StepInputs, report_off

TITLE = "Self-Attention Guidance"
SESSION_ATTRIBUTE = "_sag_session"
log = logging.getLogger("sd_webui_sag")

LABELS = {"scale": "SAG scale", "blur_sigma": "SAG blur sigma", "threshold": "SAG threshold", "start": "SAG start",
          "end": "SAG end", "hires": "SAG hires pass", "hires_scale": "SAG hires scale"}
STEPS = {"scale": 0.01, "blur_sigma": 0.1, "threshold": 0.01, "start": 0.01, "end": 0.01, "hires_scale": 0.01}
SETTINGS = {"default_scale": "scale", "default_blur_sigma": "blur_sigma", "default_threshold": "threshold",
            "default_hires": "hires"}


class UnsupportedModel(RuntimeError):
    """The model in use has nothing SAG can hook."""


def _option(name, default=None):
    return getattr(shared.opts, f"sag_{name}", default)


# ---- panel and settings ------------------------------------------------------------------------------

def panel_defaults():
    """DEFAULTS with the values the user set in Settings."""
    chosen = {field: _option(setting) for setting, field in SETTINGS.items() if _option(setting) is not None}
    return params_from(chosen, strict=False)[0]


def build_ui(script):
    """The SAG accordion for one tab; returns the controls in argument order. Hints: javascript/sag_hints.js."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    defaults = panel_defaults()

    def slider(name):
        low, high = RANGES[name]
        return gr.Slider(label=LABELS[name], minimum=low, maximum=high, step=STEPS[name],
                         value=getattr(defaults, name), elem_id=script.elem_id(name))

    with InputAccordion(DEFAULTS.enabled, label=TITLE, elem_id=script.elem_id("enabled")) as enabled:
        with gr.Row():
            controls = {"enabled": enabled, "scale": slider("scale"), "blur_sigma": slider("blur_sigma")}
        with gr.Accordion("Advanced", open=False, elem_id=script.elem_id("advanced")):
            controls["threshold"] = slider("threshold")
            with gr.Row():
                controls["start"], controls["end"] = slider("start"), slider("end")
            with gr.Row():
                controls["hires"] = gr.Radio(label=LABELS["hires"], choices=list(HIRES_MODES), value=defaults.hires,
                                             elem_id=script.elem_id("hires"))
                controls["hires_scale"] = slider("hires_scale")
    for name in SETTINGS.values():
        # ui-config.json would pin the value the panel showed at the webui's first start; these come from Settings
        controls[name].do_not_save_to_config = True

    script.infotext_fields = [(controls[name], PasteField(name)) for name in ARG_NAMES]
    script.paste_field_names = [INFOTEXT_KEYS[name] for name in ARG_NAMES]
    return [controls[name] for name in ARG_NAMES]


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Normalise pasted SAG keys (ours, the old extension's, Forge's) into our keys, with every field."""
    pasted = from_infotext(params)
    params[INFOTEXT_KEYS["enabled"]] = pasted is not None
    if pasted is not None:
        params.update({INFOTEXT_KEYS[name]: getattr(pasted, name) for name in ARG_NAMES if name != "enabled"})


def on_ui_settings() -> None:
    import gradio as gr

    section = ("sag", TITLE)
    # with the webui's sampler parameters under "Stable Diffusion" (settings categories exist since 1.7)
    category = {"category_id": "sd"} if "category_id" in inspect.signature(shared.OptionInfo.__init__).parameters else {}
    add = shared.opts.add_option
    for setting, name in SETTINGS.items():
        label = f"Default {LABELS[name].removeprefix('SAG ')} shown in the panel"
        if name == "hires":
            component, args = gr.Radio, {"choices": list(HIRES_MODES)}
        else:
            low, high = RANGES[name]
            component, args = gr.Slider, {"minimum": low, "maximum": high, "step": STEPS[name]}
        add(f"sag_{setting}", shared.OptionInfo(getattr(DEFAULTS, name), label, component, args, section=section,
                                                **category).needs_reload_ui())
    add("sag_mask_preview", shared.OptionInfo(False, "Show a mask preview (where SAG acted) in the gallery",
                                              section=section, **category))
    add("sag_save_preview", shared.OptionInfo(False, "Save mask previews with the images", section=section, **category))


def on_app_started(_demo, app) -> None:
    """Adds the API argument check (HTTP 422) in front of the generation endpoints."""
    app.middleware_stack = None
    app.add_middleware(api.ArgumentValidation, title=TITLE)
    app.build_middleware_stack()


def add_xyz_axes() -> None:
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
            xyz.add_axes(data.module)


# ---- generation lifecycle -------------------------------------------------------------------------

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


def generation_params(p, args):
    """(SagParams, options) for `p`: the script arguments with the X/Y/Z cell's overrides on top."""
    params, options, messages = parse_script_args(args, defaults=panel_defaults())
    cell = xyz.overrides(p)
    if cell:
        params, more = params_from({**dataclasses.asdict(params), **cell}, strict=False)
        messages += more
    for message in messages:
        log.warning("[SAG] %s", message)
    return params, options


def start_generation(p, args) -> None:
    """Script.process: parse the arguments, write the infotext and attach a session to `p`."""
    end_generation(p)
    release_model_hooks()
    for key in INFOTEXT_KEYS.values():
        p.extra_generation_params.pop(key, None)  # X/Y/Z cells share one dict
    try:
        params, options = generation_params(p, args)
    except InvalidParams as error:
        report_off(str(error))
        return
    if not params.enabled:
        return
    reason = _unsupported_reason()
    if reason:
        report_off(reason)
        return
    p.extra_generation_params.update(params.infotext(has_hires_pass=bool(getattr(p, "enable_hr", False))))
    preview = options.get("preview", False) if getattr(p, "is_api", False) else _option("mask_preview", False)
    setattr(p, SESSION_ATTRIBUTE, SagSession(params, collect_preview=preview, key_input=self_attention_keys))


def self_attention_keys(x):
    """The input of a self-attention's `to_k` in the webui's attention forwards: x through the loaded
    hypernetworks (x itself when none is loaded or none has a layer of x's width)."""
    return hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, x)[0]


def finish_batch(p, images) -> None:
    """Script.postprocess_batch, before the batch's infotexts are written: drop SAG's keys if it changed
    nothing, and make the mask previews over the decoded images (B, 3, H, W in 0..1)."""
    session = getattr(p, SESSION_ATTRIBUTE, None)
    if session is None:
        return
    with session.guard():
        session.settle()
    if session.changed_nothing():
        for key in INFOTEXT_KEYS.values():
            p.extra_generation_params.pop(key, None)
    share = session.preview() if session.collect_preview else None
    if share is None:
        return
    from modules import images as webui_images

    for index, image in enumerate(images):
        pixels = (image.movedim(0, -1).clamp(0, 1) * 255).byte().cpu().numpy()
        preview = overlay(Image.fromarray(pixels), share[index % share.shape[0]])
        session.previews.append(preview)
        if _option("save_preview", False):
            webui_images.save_image(preview, p.outpath_samples, "", p.seeds[index % len(p.seeds)], p.prompts[index % len(p.prompts)],
                                    shared.opts.samples_format, suffix="-sag-mask", p=p)
    session.preview_mask = None


def end_generation(p, processed=None) -> None:
    """Script.postprocess (and before a new start): remove the hooks, say if SAG changed nothing, show
    previews, forget the session."""
    session = getattr(p, SESSION_ATTRIBUTE, None)
    if session is None:
        return
    session.close()
    if processed is not None:
        session.report_unchanged()
    setattr(p, SESSION_ATTRIBUTE, None)
    if processed is not None and session.previews:
        processed.images.extend(session.previews)
        processed.infotexts.extend([processed.infotexts[0]] * len(session.previews))


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
    p = getattr(denoiser, "p", None)
    session = getattr(p, SESSION_ATTRIBUTE, None)
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
    """Register every callback exactly once, whatever reloads the script, and add the X/Y/Z axes."""
    for register, callback in ((script_callbacks.on_cfg_denoiser, on_cfg_denoiser),
                               (script_callbacks.on_cfg_denoised, on_cfg_denoised),
                               (script_callbacks.on_cfg_after_cfg, on_cfg_after_cfg),
                               (script_callbacks.on_script_unloaded, release_model_hooks),
                               (script_callbacks.on_infotext_pasted, on_infotext_pasted),
                               (script_callbacks.on_ui_settings, on_ui_settings),
                               (script_callbacks.on_app_started, on_app_started),
                               (script_callbacks.on_before_ui, add_xyz_axes)):
        script_callbacks.remove_callbacks_for_function(callback)
        register(callback)
    add_xyz_axes()  # also now: with --nowebui the X/Y/Z script builds its UI before on_before_ui runs
