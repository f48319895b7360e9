"""Each method's section in Settings (under "Stable Diffusion") and the values the user chose there."""
import inspect

from modules import shared

from ..core.params import HIRES_MODES, SagParams, params_from
from ..core.perturbed_params import PagParams, SegParams

# Settings that choose what a method's panel shows by default: option name (after "<key>_") -> parameter
PANEL_DEFAULTS = {
    SagParams: {"default_scale": "scale", "default_blur_sigma": "blur_sigma", "default_threshold": "threshold",
                "default_hires": "hires"},
    PagParams: {"default_scale": "scale", "default_layers": "layers", "default_hires": "hires"},
    SegParams: {"default_scale": "scale", "default_blur_sigma": "blur_sigma", "default_layers": "layers",
                "default_hires": "hires"},
}
SLIDER_STEPS = {"scale": 0.01, "blur_sigma": 0.1, "threshold": 0.01, "start": 0.01, "end": 0.01, "hires_scale": 0.01,
                "rescale": 0.01}
LABELS = {"scale": "scale", "blur_sigma": "blur sigma", "threshold": "threshold", "start": "start", "end": "end",
          "hires": "hires pass", "hires_scale": "hires scale", "layers": "layers", "rescale": "CFG rescale",
          "rescale_mode": "rescale mode"}


def control_label(params_class, name: str) -> str:
    """A control's label: "SAG scale", "PAG layers", ... (the hover hints are keyed by them)."""
    return f"{params_class.METHOD.abbreviation} {LABELS[name]}"


def component(params_class, name: str):
    """(gradio component, its arguments) of a parameter's control: a radio for choices, a text box for the
    layers, a number field for SEG's blur sigma (whose negative values all mean infinity), else a slider."""
    import gradio as gr

    method = params_class.METHOD
    if name == "hires" or name in method.choices:
        return gr.Radio, {"choices": list(method.choices.get(name, HIRES_MODES))}
    if name in method.texts:
        return gr.Textbox, {"max_lines": 1}
    low, high = method.ranges[name]
    if low == float("-inf"):
        return gr.Number, {}
    return gr.Slider, {"minimum": low, "maximum": high, "step": SLIDER_STEPS[name]}


def option(name, default=None, params_class=SagParams):
    """The value of the method's setting `<key>_<name>` (`sag_mask_preview`, `pag_default_scale`, ...)."""
    return getattr(shared.opts, f"{params_class.METHOD.key}_{name}", default)


def panel_defaults(params_class=SagParams):
    """The method's defaults with the values the user set in Settings."""
    chosen = {field: option(setting, params_class=params_class)
              for setting, field in PANEL_DEFAULTS[params_class].items()
              if option(setting, params_class=params_class) is not None}
    return params_from(chosen, strict=False, defaults=params_class())[0]


def on_ui_settings() -> None:
    # with the webui's sampler parameters under "Stable Diffusion" (settings categories exist since 1.7)
    category = {"category_id": "sd"} if "category_id" in inspect.signature(shared.OptionInfo.__init__).parameters else {}
    add = shared.opts.add_option
    for params_class, settings in PANEL_DEFAULTS.items():
        method, defaults = params_class.METHOD, params_class()
        section = (method.key, method.title)
        for setting, name in settings.items():
            label = f"Default {LABELS[name]} shown in the panel"
            add(f"{method.key}_{setting}", shared.OptionInfo(getattr(defaults, name), label, *component(params_class, name),
                                                            section=section, **category).needs_reload_ui())
        if params_class is PagParams:
            add("pag_in_webui_call", shared.OptionInfo(
                True, "Run PAG's and SEG's rows in the webui's own UNet call (same image; one call less per step)",
                section=section, **category))
        if params_class is SagParams:
            add("sag_mask_preview", shared.OptionInfo(False, "Show a mask preview (where SAG acted) in the gallery",
                                                      section=section, **category))
            add("sag_save_preview", shared.OptionInfo(False, "Save mask previews with the images", section=section,
                                                      **category))
