"""Stand-in of how webui 1.10 reads a script's `infotext_fields` on its three paste routes
(modules/infotext_utils.py and Api.apply_infotext in modules/api/api.py):

- `paste_values`, the paste button and PNG Info's "Send to" (`connect_paste`'s paste_func): the parsed
  infotext first goes through the `infotext_pasted` callbacks; a callable key is called, a string key
  is looked up; None leaves the control unchanged.
- `api_values`, the API's `infotext` request field (`Api.apply_infotext`): no `infotext_pasted` callbacks;
  a PasteField's `function` (its key if callable) is called, else its `label` (its key if a string) is
  looked up, and the value is converted to the type of the component's value.
- `send_to_fields`, the txt2img gallery's "Send to img2img" (`connect_paste_params_buttons`): copies the
  controls whose key is among the `paste_field_names`.
"""
from modules import script_callbacks


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


def paste_values(fields, params: dict) -> list:
    script_callbacks.infotext_pasted_callback("", params)
    values = []
    for component, key in fields:
        value = key(params) if callable(key) else params.get(key)
        values.append(None if value is None else type(component.value)(value))
    return values


def api_values(fields, params: dict) -> list:
    values = []
    for field in (PasteField(*entry) for entry in fields):
        value = field.function(params) if field.function else params.get(field.label)
        values.append(None if value is None else type(field.component.value)(value))
    return values


def send_to_fields(fields, paste_field_names) -> list:
    return [component for component, key in fields if key in paste_field_names]
