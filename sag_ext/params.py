"""SAG's parameters: defaults, ranges, parsing of the script arguments and the infotext they write."""
import math
from dataclasses import dataclass, fields

RANGES = {"scale": (-2.0, 5.0), "blur_sigma": (0.0, 10.0), "threshold": (0.0, 4.0)}
INFOTEXT_KEYS = {"scale": "SAG Scale", "blur_sigma": "SAG Blur Sigma", "threshold": "SAG Threshold"}


@dataclass(frozen=True)
class SagParams:
    """What one generation uses. Positional script arguments come in this field order."""

    enabled: bool = False
    scale: float = 0.5
    blur_sigma: float = 2.0
    threshold: float = 1.0

    def infotext(self) -> dict:
        """Infotext entries: scale and blur sigma always, threshold only when not default."""
        entries = {INFOTEXT_KEYS["scale"]: self.scale, INFOTEXT_KEYS["blur_sigma"]: self.blur_sigma}
        if self.threshold != DEFAULTS.threshold:
            entries[INFOTEXT_KEYS["threshold"]] = self.threshold
        return entries


DEFAULTS = SagParams()
ARG_NAMES = tuple(field.name for field in fields(SagParams))


class InvalidParams(ValueError):
    """A script argument SAG cannot use at all."""


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InvalidParams(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise InvalidParams(f"{name} must be finite, got {value!r}")
    return float(value)


def parse_script_args(args) -> tuple:
    """SagParams from positional script arguments (missing ones take the defaults).

    Numbers outside their range are clamped; returns (params, messages about what was clamped).
    Raises InvalidParams for values that are not numbers at all.
    """
    values = dict(zip(ARG_NAMES, args))
    enabled = bool(values.get("enabled", DEFAULTS.enabled))
    messages, numbers = [], {}
    for name, (low, high) in RANGES.items():
        value = _number(name, values.get(name, getattr(DEFAULTS, name)))
        clamped = min(max(value, low), high)
        if clamped != value:
            messages.append(f"{name} {value} is outside {low}..{high}, using {clamped}")
        numbers[name] = clamped
    return SagParams(enabled=enabled, **numbers), messages
