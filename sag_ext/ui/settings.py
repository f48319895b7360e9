"""SAG's section in Settings (under "Stable Diffusion") and the values the user chose there."""
import inspect

from modules import shared

from ..core.params import DEFAULTS, HIRES_MODES, RANGES, params_from
from . import TITLE

# Settings that choose what the panel shows by default: option name -> parameter
PANEL_DEFAULTS = {"default_scale": "scale", "default_blur_sigma": "blur_sigma", "default_threshold": "threshold",
                  "default_hires": "hires"}
SLIDER_STEPS = {"scale": 0.01, "blur_sigma": 0.1, "threshold": 0.01, "start": 0.01, "end": 0.01, "hires_scale": 0.01}
CONTROL_LABELS = {"scale": "SAG scale", "blur_sigma": "SAG blur sigma", "threshold": "SAG threshold",
                  "start": "SAG start", "end": "SAG end", "hires": "SAG hires pass", "hires_scale": "SAG hires scale"}


def option(name, default=None):
    """The value of SAG's setting `sag_<name>`."""
    return getattr(shared.opts, f"sag_{name}", default)


def panel_defaults():
    """DEFAULTS with the values the user set in Settings."""
    chosen = {field: option(setting) for setting, field in PANEL_DEFAULTS.items() if option(setting) is not None}
    return params_from(chosen, strict=False)[0]


def on_ui_settings() -> None:
    import gradio as gr

    section = ("sag", TITLE)
    # with the webui's sampler parameters under "Stable Diffusion" (settings categories exist since 1.7)
    category = {"category_id": "sd"} if "category_id" in inspect.signature(shared.OptionInfo.__init__).parameters else {}
    add = shared.opts.add_option
    for setting, name in PANEL_DEFAULTS.items():
        label = f"Default {CONTROL_LABELS[name].removeprefix('SAG ')} shown in the panel"
        if name == "hires":
            component, args = gr.Radio, {"choices": list(HIRES_MODES)}
        else:
            low, high = RANGES[name]
            component, args = gr.Slider, {"minimum": low, "maximum": high, "step": SLIDER_STEPS[name]}
        add(f"sag_{setting}", shared.OptionInfo(getattr(DEFAULTS, name), label, component, args, section=section,
                                                **category).needs_reload_ui())
    add("sag_mask_preview", shared.OptionInfo(False, "Show a mask preview (where SAG acted) in the gallery",
                                              section=section, **category))
    add("sag_save_preview", shared.OptionInfo(False, "Save mask previews with the images", section=section, **category))
