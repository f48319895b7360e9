"""Pasting infotext: our keys, the old `sd_webui_SAG` extension's and Forge's, read into SAG's controls."""
from ..core.params import ARG_NAMES, INFOTEXT_KEYS, from_infotext


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Normalise pasted SAG keys (ours, the old extension's, Forge's) into our keys, with every field."""
    pasted = from_infotext(params)
    params[INFOTEXT_KEYS["enabled"]] = pasted is not None
    if pasted is not None:
        params.update({INFOTEXT_KEYS[name]: getattr(pasted, name) for name in ARG_NAMES if name != "enabled"})


class PasteField(str):
    """One control's entry in the webui's paste fields: our infotext key, and a reader of every key set.

    As a string it is our key, which "Send to" between the tabs matches to copy the control. Called with a
    parsed infotext, as the paste button, PNG Info's "Send to" and the API's `infotext` field do, it
    returns the parameter read from ours, the old extension's or Forge's keys (None leaves the control
    as it is); Enabled answers whether the infotext has SAG at all.
    """

    def __new__(cls, name: str):
        field = super().__new__(cls, INFOTEXT_KEYS[name])
        field.name = name
        return field

    def __call__(self, infotext: dict):
        try:
            pasted = from_infotext(infotext)
        except ValueError:  # a SAG value that is not a number, or start after end: leave the control
            return None
        if self.name == "enabled":
            return pasted is not None
        return None if pasted is None else getattr(pasted, self.name)
