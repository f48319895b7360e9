"""Stand-in of modules.ui_components: InputAccordion, a checkbox that is also an accordion (webui 1.6+)."""
import gradio


class InputAccordion(gradio.Checkbox):
    def __init__(self, value, **kwargs):
        super().__init__(value=value, **kwargs)
