"""A method's panel in the txt2img and img2img tabs. Hover hints: javascript/sag_hints.js."""
from ..core.params import SagParams, arg_names
from .paste import PasteField
from .settings import PANEL_DEFAULTS, component, control_label, panel_defaults

MAIN_ROW = ("scale", "blur_sigma")  # shown with the checkbox; the others are under "Advanced"
PAIRS = {"start": "end", "hires": "hires_scale", "rescale": "rescale_mode"}  # rows of two under "Advanced"


def build_ui(script, params_class=SagParams, forge_keys: bool = True):
    """The method's accordion for one tab; returns the controls in argument order. `forge_keys`: whether
    pasting other implementations' infotext keys sets them (see paste)."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    method, defaults, names = params_class.METHOD, panel_defaults(params_class), arg_names(params_class)

    def control(name):
        kind, args = component(params_class, name)
        return kind(label=control_label(params_class, name), value=getattr(defaults, name),
                    elem_id=script.elem_id(name), **args)

    with InputAccordion(False, label=method.title, elem_id=script.elem_id("enabled")) as enabled:
        controls = {"enabled": enabled}
        with gr.Row():
            controls.update((name, control(name)) for name in names if name in MAIN_ROW)
        with gr.Accordion("Advanced", open=False, elem_id=script.elem_id("advanced")):
            for name in names:
                if name == "enabled" or name in MAIN_ROW or name in PAIRS.values():
                    continue
                with gr.Row():
                    controls.update((row, control(row)) for row in (name, PAIRS.get(name)) if row in names)
    for name in PANEL_DEFAULTS[params_class].values():
        # ui-config.json would pin the value the panel showed at the webui's first start; these come from Settings
        controls[name].do_not_save_to_config = True

    script.infotext_fields = [(controls[name], PasteField(name, forge_keys, params_class)) for name in names]
    script.paste_field_names = [method.infotext_keys[name] for name in names]
    return [controls[name] for name in names]
