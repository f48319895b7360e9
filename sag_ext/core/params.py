"""Each method's parameters: defaults, ranges, the script arguments (positional or one dict) and the infotext.

A method's parameters are a frozen dataclass (SAG's `SagParams` here; PAG's and SEG's in
`perturbed_params`) with a `Method` describing them: ranges, choices, infotext keys and the keys other
implementations write. The functions below read and check any of them the same way.
"""
import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable, ClassVar, Optional

HIRES_MODES = ("same", "off", "own")
API_ONLY_KEYS = ("preview",)  # dict-only request options, not generation parameters


class InvalidParams(ValueError):
    """A script argument a method cannot use; the message names the field."""


@dataclass(frozen=True)
class Method:
    """What the UI and the checks need to know of one method's parameters."""

    key: str  # "sag": Settings names, X/Y/Z attributes
    abbreviation: str  # "SAG": infotext keys, console lines
    title: str  # the Script's title and API name
    ranges: dict  # number field -> (low, high)
    infotext_keys: dict  # field -> infotext key
    always_written: tuple  # fields written in every infotext of a generation it changed
    choices: dict = field(default_factory=dict)  # field -> allowed values
    texts: dict = field(default_factory=dict)  # text field -> checker, raising ValueError with the reason
    old_keys: dict = field(default_factory=dict)  # keys of earlier versions of this method's extension -> field
    other_keys: Optional[Callable[[dict], Optional[dict]]] = None  # another implementation's infotext -> fields


class StepSchedule:
    """What every method's parameters share: enabled, scale, start..end and the hires-pass control."""

    METHOD: ClassVar[Method]

    def scale_for(self, hires_pass: bool) -> float:
        if not hires_pass or self.hires == "same":
            return self.scale
        return 0.0 if self.hires == "off" else self.hires_scale

    def in_range(self, progress: float) -> bool:
        """Whether a step at `progress` (0 = first step, towards 1 = last) lies in [start, end]."""
        return self.start <= progress and (progress < self.end or self.end >= 1.0)

    def infotext(self, has_hires_pass: bool) -> dict:
        """Infotext entries: the method's `always_written` fields, the others only when not default; the
        hires entries only for a generation with a hires pass."""
        method, defaults = self.METHOD, type(self)()
        entries = {method.infotext_keys[name]: getattr(self, name) for name in method.always_written}
        for name in arg_names(type(self)):
            if name in method.always_written or name in ("enabled", "hires", "hires_scale"):
                continue
            if getattr(self, name) != getattr(defaults, name):
                entries[method.infotext_keys[name]] = getattr(self, name)
        if has_hires_pass and self.hires != "same":
            entries[method.infotext_keys["hires"]] = self.hires
        if has_hires_pass and self.hires == "own":
            entries[method.infotext_keys["hires_scale"]] = self.hires_scale
        return entries


def arg_names(params_class) -> tuple:
    """The positional script arguments, in order: the dataclass's fields."""
    return tuple(f.name for f in fields(params_class))


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParams(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidParams(f"{name} must be finite, got {value!r}")
    return float(value)


def _checked(method: Method, name: str, value, strict: bool, messages: list):
    """One field's value, type-checked; out-of-range numbers clamp (with a message) unless strict."""
    if name in ("enabled", "preview"):
        if not isinstance(value, bool):
            raise InvalidParams(f"{name} must be true or false, got {value!r}")
        return value
    allowed = {"hires": HIRES_MODES, **method.choices}.get(name)
    if allowed is not None:
        if value not in allowed:
            raise InvalidParams(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value
    if name in method.texts:
        if not isinstance(value, str):
            raise InvalidParams(f"{name} must be a string, got {value!r}")
        try:
            return method.texts[name](value)
        except ValueError as error:
            raise InvalidParams(f"{name}: {error}") from None
    number = _number(name, value)
    low, high = method.ranges[name]
    clamped = min(max(number, low), high)
    if clamped != number:
        if strict:
            raise InvalidParams(f"{name} must be within {low}..{high}, got {number}")
        messages.append(f"{name} {number} is outside {low}..{high}, using {clamped}")
    return clamped


def params_from(values: dict, strict: bool, defaults=None) -> tuple:
    """(params, messages) from field values; the missing ones take `defaults` (SAG's defaults if None),
    whose class says which method's they are. Raises InvalidParams."""
    defaults = DEFAULTS if defaults is None else defaults
    method, names = defaults.METHOD, arg_names(type(defaults))
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InvalidParams(f"unknown key {unknown[0]!r}; known keys: {', '.join(names + API_ONLY_KEYS)}")
    messages = []
    params = replace(defaults, **{name: _checked(method, name, value, strict, messages)
                                  for name, value in values.items()})
    if params.start > params.end:
        raise InvalidParams(f"start ({params.start}) must not be after end ({params.end})")
    return params, messages


def parse_script_args(args, strict: bool = False, defaults=None) -> tuple:
    """(params, options, messages) from the script arguments of the method `defaults` belongs to.

    `args` is the positional list in panel order (missing ones take the defaults), or a list whose first
    item is a dict with any of the fields (`enabled` defaults to true there, the others to `defaults`)
    plus API options (`preview`); the webui's API fills the slots after it with the panel's values,
    which are then ignored. A dict is checked strictly; a positional list is clamped to the ranges with
    messages unless `strict`. Raises InvalidParams.
    """
    defaults = DEFAULTS if defaults is None else defaults
    method, names = defaults.METHOD, arg_names(type(defaults))
    args = list(args)
    if args and isinstance(args[0], dict):
        values = {"enabled": True, **args[0]}
        options = {key: _checked(method, key, values.pop(key), True, []) for key in API_ONLY_KEYS if key in values}
        params, messages = params_from(values, strict=True, defaults=defaults)
        return params, options, messages
    if len(args) > len(names):
        raise InvalidParams(f"at most {len(names)} arguments ({', '.join(names)}), got {len(args)}")
    values = dict(zip(names, args))
    if "enabled" in values:
        values["enabled"] = bool(values["enabled"])  # the panel's checkbox may come as 0/1
    params, messages = params_from(values, strict, defaults)
    return params, {}, messages


def from_infotext(infotext: dict, other_keys: bool = True, defaults=None):
    """The parameters of `defaults`' method from a parsed infotext (ours, our earlier versions', and with
    `other_keys` another implementation's keys), or None where the infotext has none of them."""
    defaults = DEFAULTS if defaults is None else defaults
    method = defaults.METHOD
    names = {key: name for name, key in method.infotext_keys.items()}
    names.update(method.old_keys)
    values = {names[key]: value for key, value in infotext.items() if key in names}
    others = method.other_keys(infotext) if other_keys and method.other_keys else None
    if "scale" not in values and others is None:
        return None
    values = {**(others or {}), **values}
    values.pop("enabled", None)
    for name, value in values.items():
        if name not in method.texts and name not in method.choices and name != "hires":
            values[name] = float(value)
    return params_from({**values, "enabled": True}, strict=False, defaults=defaults)[0]


# ---- SAG ---------------------------------------------------------------------------------------------

RANGES = {"scale": (-2.0, 5.0), "blur_sigma": (0.0, 10.0), "threshold": (0.0, 4.0), "start": (0.0, 1.0),
          "end": (0.0, 1.0), "hires_scale": (-2.0, 5.0)}
INFOTEXT_KEYS = {"enabled": "SAG Enabled", "scale": "SAG Scale", "blur_sigma": "SAG Blur Sigma",
                 "threshold": "SAG Threshold", "start": "SAG Start", "end": "SAG End", "hires": "SAG Hires",
                 "hires_scale": "SAG Hires Scale"}
OLD_EXTENSION_INFOTEXT_KEYS = {"SAG Guidance Scale": "scale", "SAG Mask Threshold": "threshold"}
FORGE_INFOTEXT_KEYS = {"sag_scale": "scale", "sag_blur_sigma": "blur_sigma", "sag_threshold": "threshold"}
FORGE_ENABLED_KEY = "sag_enabled"  # the Forge hosts' built-in SAG writes these


def _forge_sag_keys(infotext: dict) -> Optional[dict]:
    """The Forge hosts' built-in SAG's keys, where it was on."""
    values = {name: infotext[key] for key, name in FORGE_INFOTEXT_KEYS.items() if key in infotext}
    on = str(infotext.get(FORGE_ENABLED_KEY, "")).lower() == "true"
    return values if on or "scale" in values else None


@dataclass(frozen=True)
class SagParams(StepSchedule):
    """What one generation uses. Positional script arguments come in this field order."""

    METHOD: ClassVar[Method] = Method(
        key="sag", abbreviation="SAG", title="Self-Attention Guidance", ranges=RANGES, infotext_keys=INFOTEXT_KEYS,
        always_written=("scale", "blur_sigma"), old_keys=OLD_EXTENSION_INFOTEXT_KEYS, other_keys=_forge_sag_keys)

    enabled: bool = False
    scale: float = 0.5
    blur_sigma: float = 2.0
    threshold: float = 1.0
    start: float = 0.0
    end: float = 1.0
    hires: str = "same"  # hires-fix second pass: "same" as the first pass, "off", or "own" (hires_scale)
    hires_scale: float = 0.5


DEFAULTS = SagParams()
ARG_NAMES = arg_names(SagParams)
