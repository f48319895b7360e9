"""Pasting infotext: our keys, the old `sd_webui_SAG` extension's and Forge's, read into SAG's controls.

Forge's built-in SAG writes `sag_enabled`, `sag_scale`, ...: where the host has no SAG of its own
(A1111) they restore ours; in the Forge family they belong to the host's SAG and ours leaves them alone.
"""
from ..core.params import ARG_NAMES, INFOTEXT_KEYS, from_infotext


def _normalise(params: dict, forge_keys: bool) -> None:
    pasted = from_infotext(params, forge_keys)
    params[INFOTEXT_KEYS["enabled"]] = pasted is not None
    if pasted is not None:
        params.update({INFOTEXT_KEYS[name]: getattr(pasted, name) for name in ARG_NAMES if name != "enabled"})


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Normalise pasted SAG keys (ours, the old extension's, Forge's) into our keys, with every field."""
    _normalise(params, forge_keys=True)


def on_infotext_pasted_own_keys(infotext: str, params: dict) -> None:
    """As `on_infotext_pasted`, leaving Forge's keys to the host's built-in SAG."""
    _normalise(params, forge_keys=False)


class PasteField(str):
    """One control's entry in the webui's paste fields: our infotext key, and a reader of every key set.

    As a string it is our key, which "Send to" between the tabs matches to copy the control. Called with a
    parsed infotext, as the paste button, PNG Info's "Send to" and the API's `infotext` field do, it
    returns the parameter read from ours, the old extension's or (with `forge_keys`) Forge's keys (None
    leaves the control as it is); Enabled answers whether the infotext has SAG at all.
    """

    def __new__(cls, name: str, forge_keys: bool = True):
        field = super().__new__(cls, INFOTEXT_KEYS[name])
        field.name, field.forge_keys = name, forge_keys
        return field

    def __call__(self, infotext: dict):
        try:
            pasted = from_infotext(infotext, self.forge_keys)
        except ValueError:  # a SAG value that is not a number, or start after end: leave the control
            return None
        if self.name == "enabled":
            return pasted is not None
        return None if pasted is None else getattr(pasted, self.name)
