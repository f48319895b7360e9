"""SAG's parameters: defaults, ranges, the script arguments (positional or one dict) and the infotext."""
import math
from dataclasses import dataclass, fields, replace

RANGES = {"scale": (-2.0, 5.0), "blur_sigma": (0.0, 10.0), "threshold": (0.0, 4.0), "start": (0.0, 1.0),
          "end": (0.0, 1.0), "hires_scale": (-2.0, 5.0)}
HIRES_MODES = ("same", "off", "own")
INFOTEXT_KEYS = {"enabled": "SAG Enabled", "scale": "SAG Scale", "blur_sigma": "SAG Blur Sigma",
                 "threshold": "SAG Threshold", "start": "SAG Start", "end": "SAG End", "hires": "SAG Hires",
                 "hires_scale": "SAG Hires Scale"}


@dataclass(frozen=True)
class SagParams:
    """What one generation uses. Positional script arguments come in this field order."""

    enabled: bool = False
    scale: float = 0.5
    blur_sigma: float = 2.0
    threshold: float = 1.0
    start: float = 0.0
    end: float = 1.0
    hires: str = "same"  # hires-fix second pass: "same" as the first pass, "off", or "own" (hires_scale)
    hires_scale: float = 0.5

    def infotext(self, has_hires_pass: bool) -> dict:
        """Infotext entries: scale and blur sigma always, the others only when not default; the hires
        entries only for a generation with a hires pass."""
        entries = {INFOTEXT_KEYS["scale"]: self.scale, INFOTEXT_KEYS["blur_sigma"]: self.blur_sigma}
        for name in ("threshold", "start", "end") + (("hires",) if has_hires_pass else ()):
            if getattr(self, name) != getattr(DEFAULTS, name):
                entries[INFOTEXT_KEYS[name]] = getattr(self, name)
        if has_hires_pass and self.hires == "own":
            entries[INFOTEXT_KEYS["hires_scale"]] = self.hires_scale
        return entries

    def scale_for(self, hires_pass: bool) -> float:
        if not hires_pass or self.hires == "same":
            return self.scale
        return 0.0 if self.hires == "off" else self.hires_scale

    def in_range(self, progress: float) -> bool:
        """Whether a step at `progress` (0 = first step, towards 1 = last) lies in [start, end]."""
        return self.start <= progress and (progress < self.end or self.end >= 1.0)


DEFAULTS = SagParams()
ARG_NAMES = tuple(field.name for field in fields(SagParams))
API_ONLY_KEYS = ("preview",)  # dict-only request options, not generation parameters


class InvalidParams(ValueError):
    """A script argument SAG cannot use; the message names the field."""


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParams(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidParams(f"{name} must be finite, got {value!r}")
    return float(value)


def _checked(name: str, value, strict: bool, messages: list):
    """One field's value, type-checked; out-of-range numbers clamp (with a message) unless strict."""
    if name in ("enabled", "preview"):
        if not isinstance(value, bool):
            raise InvalidParams(f"{name} must be true or false, got {value!r}")
        return value
    if name == "hires":
        if value not in HIRES_MODES:
            raise InvalidParams(f"hires must be one of {', '.join(HIRES_MODES)}, got {value!r}")
        return value
    number = _number(name, value)
    low, high = RANGES[name]
    clamped = min(max(number, low), high)
    if clamped != number:
        if strict:
            raise InvalidParams(f"{name} must be within {low}..{high}, got {number}")
        messages.append(f"{name} {number} is outside {low}..{high}, using {clamped}")
    return clamped


def params_from(values: dict, strict: bool, defaults: SagParams = DEFAULTS) -> tuple:
    """(SagParams, messages) from field values; the missing ones take `defaults`. Raises InvalidParams."""
    unknown = sorted(set(values) - set(ARG_NAMES))
    if unknown:
        raise InvalidParams(f"unknown key {unknown[0]!r}; known keys: {', '.join(ARG_NAMES + API_ONLY_KEYS)}")
    messages = []
    params = replace(defaults, **{name: _checked(name, value, strict, messages) for name, value in values.items()})
    if params.start > params.end:
        raise InvalidParams(f"start ({params.start}) must not be after end ({params.end})")
    return params, messages


def parse_script_args(args, strict: bool = False, defaults: SagParams = DEFAULTS) -> tuple:
    """(SagParams, options, messages) from the script arguments.

    `args` is the positional list in panel order (missing ones take the defaults), or a list whose first
    item is a dict with any of the fields (`enabled` defaults to true there, the others to `defaults`)
    plus API options (`preview`); the webui's API fills the slots after it with the panel's values,
    which are then ignored. A dict
    is checked strictly; a positional list is clamped to the ranges with messages unless `strict`.
    Raises InvalidParams.
    """
    args = list(args)
    if args and isinstance(args[0], dict):
        values = {"enabled": True, **args[0]}
        options = {key: _checked(key, values.pop(key), True, []) for key in API_ONLY_KEYS if key in values}
        params, messages = params_from(values, strict=True, defaults=defaults)
        return params, options, messages
    if len(args) > len(ARG_NAMES):
        raise InvalidParams(f"at most {len(ARG_NAMES)} arguments ({', '.join(ARG_NAMES)}), got {len(args)}")
    values = dict(zip(ARG_NAMES, args))
    if "enabled" in values:
        values["enabled"] = bool(values["enabled"])  # the panel's checkbox may come as 0/1
    params, messages = params_from(values, strict, defaults)
    return params, {}, messages


OLD_EXTENSION_INFOTEXT_KEYS = {"SAG Guidance Scale": "scale", "SAG Mask Threshold": "threshold"}
FORGE_INFOTEXT_KEYS = {"sag_scale": "scale", "sag_blur_sigma": "blur_sigma", "sag_threshold": "threshold"}
FORGE_ENABLED_KEY = "sag_enabled"  # the Forge hosts' built-in SAG writes these


def from_infotext(infotext: dict, forge_keys: bool = True):
    """SagParams from a parsed infotext (ours, the old extension's, and with `forge_keys` Forge's built-in
    SAG's keys), or None without SAG."""
    names = {key: name for name, key in INFOTEXT_KEYS.items()}
    names.update(OLD_EXTENSION_INFOTEXT_KEYS)
    if forge_keys:
        names.update(FORGE_INFOTEXT_KEYS)
    values = {names[key]: value for key, value in infotext.items() if key in names}
    forge_enabled = forge_keys and str(infotext.get(FORGE_ENABLED_KEY, "")).lower() == "true"
    if "scale" not in values and not forge_enabled:
        return None
    values.pop("enabled", None)
    for name, value in values.items():
        if name != "hires":
            values[name] = float(value)
    return params_from({**values, "enabled": True}, strict=False)[0]
