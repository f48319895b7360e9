"""Pasting infotext: each method's keys, and other implementations' keys, read into its controls.

Other implementations write keys of their own: the old `sd_webui_SAG` extension (read everywhere),
Forge's built-in SAG (`sag_*`) and PAG (`pagi_*`), pamparamm's sd-perturbed-attention (`pag_*`, `seg_*`).
Where the host has none of them (A1111) they restore ours; in the Forge family they belong to the host's
own or to that extension, and ours leaves them alone.
"""
from ..core.params import SagParams, arg_names, from_infotext
from ..core.perturbed_params import PagParams, SegParams

METHODS = (SagParams, PagParams, SegParams)


def _normalise(params: dict, other_keys: bool) -> None:
    for params_class in METHODS:
        keys = params_class.METHOD.infotext_keys
        try:
            pasted = from_infotext(params, other_keys, params_class())
        except ValueError:  # a value that is not a number, or start after end: the fields decide alone
            continue
        params[keys["enabled"]] = pasted is not None
        if pasted is not None:
            params.update({keys[name]: getattr(pasted, name) for name in arg_names(params_class) if name != "enabled"})


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Normalise pasted keys (ours, the old extension's, the other implementations') into ours, with every field."""
    _normalise(params, other_keys=True)


def on_infotext_pasted_own_keys(infotext: str, params: dict) -> None:
    """As `on_infotext_pasted`, leaving the other implementations' keys to them."""
    _normalise(params, other_keys=False)


class PasteField(str):
    """One control's entry in the webui's paste fields: our infotext key, and a reader of every key set.

    As a string it is our key, which "Send to" between the tabs matches to copy the control. Called with a
    parsed infotext, as the paste button, PNG Info's "Send to" and the API's `infotext` field do, it
    returns the parameter read from ours or (with `other_keys`) another implementation's keys (None leaves
    the control as it is); Enabled answers whether the infotext has the method at all.
    """

    def __new__(cls, name: str, other_keys: bool = True, params_class=SagParams):
        field = super().__new__(cls, params_class.METHOD.infotext_keys[name])
        field.name, field.other_keys, field.params_class = name, other_keys, params_class
        return field

    def __call__(self, infotext: dict):
        try:
            pasted = from_infotext(infotext, self.other_keys, self.params_class())
        except ValueError:  # a value that is not a number, or start after end: leave the control
            return None
        if self.name == "enabled":
            return pasted is not None
        return None if pasted is None else getattr(pasted, self.name)
