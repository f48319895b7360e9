"""The SAG panel of the txt2img and img2img tabs. Hover hints: javascript/sag_hints.js."""
from ..core.params import ARG_NAMES, DEFAULTS, HIRES_MODES, INFOTEXT_KEYS, RANGES
from . import TITLE
from .paste import PasteField
from .settings import CONTROL_LABELS, PANEL_DEFAULTS, SLIDER_STEPS, panel_defaults


def build_ui(script, forge_keys: bool = True):
    """The SAG accordion for one tab; returns the controls in argument order. `forge_keys`: whether pasting
    Forge's `sag_*` infotext keys sets them (see paste)."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    defaults = panel_defaults()

    def slider(name):
        low, high = RANGES[name]
        return gr.Slider(label=CONTROL_LABELS[name], minimum=low, maximum=high, step=SLIDER_STEPS[name],
                         value=getattr(defaults, name), elem_id=script.elem_id(name))

    with InputAccordion(DEFAULTS.enabled, label=TITLE, elem_id=script.elem_id("enabled")) as enabled:
        with gr.Row():
            controls = {"enabled": enabled, "scale": slider("scale"), "blur_sigma": slider("blur_sigma")}
        with gr.Accordion("Advanced", open=False, elem_id=script.elem_id("advanced")):
            controls["threshold"] = slider("threshold")
            with gr.Row():
                controls["start"], controls["end"] = slider("start"), slider("end")
            with gr.Row():
                controls["hires"] = gr.Radio(label=CONTROL_LABELS["hires"], choices=list(HIRES_MODES),
                                             value=defaults.hires, elem_id=script.elem_id("hires"))
                controls["hires_scale"] = slider("hires_scale")
    for name in PANEL_DEFAULTS.values():
        # ui-config.json would pin the value the panel showed at the webui's first start; these come from Settings
        controls[name].do_not_save_to_config = True

    script.infotext_fields = [(controls[name], PasteField(name, forge_keys)) for name in ARG_NAMES]
    script.paste_field_names = [INFOTEXT_KEYS[name] for name in ARG_NAMES]
    return [controls[name] for name in ARG_NAMES]
