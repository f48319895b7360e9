"""PAG's and SEG's parameters. Defaults and ranges from the references: scale 3.0 (pamparamm's webui
scripts: 0..30), the middle block's self-attention (`m0`, as Forge's built-in PAG and ComfyUI's node),
SEG's blur sigma -1 (infinity: every query replaced by their mean); a negative sigma means infinity."""
import math
from dataclasses import dataclass
from typing import ClassVar, Optional

from .layers import normalised_layers
from .params import Method, StepSchedule

RESCALE_MODES = ("full", "partial", "snf")
COMMON_RANGES = {"scale": (0.0, 30.0), "start": (0.0, 1.0), "end": (0.0, 1.0), "hires_scale": (0.0, 30.0),
                 "rescale": (0.0, 1.0)}
INFINITE_BLUR = -1.0


def _infotext_keys(abbreviation: str, names: tuple) -> dict:
    return {name: f"{abbreviation} {name.replace('_', ' ').title()}" for name in names}


def _blur_sigma(value: float) -> float:
    """Any negative sigma is infinity, written -1."""
    return INFINITE_BLUR if value < 0 else value


PAG_FIELDS = ("enabled", "scale", "start", "end", "hires", "hires_scale", "layers", "rescale", "rescale_mode")
SEG_FIELDS = PAG_FIELDS + ("blur_sigma",)
BLOCK_LETTERS = {"input": "d", "middle": "m", "output": "u"}


def _pamparamm_keys(prefix: str, extra: tuple = ()):
    """A reader of pamparamm's sd-perturbed-attention keys (`pag_*` or `seg_*`), for hosts without them."""

    def read(infotext: dict) -> Optional[dict]:
        if f"{prefix}_scale" not in infotext and str(infotext.get(f"{prefix}_enabled", "")).lower() != "true":
            return None
        values = {name: infotext[f"{prefix}_{name}"] for name in ("scale", "rescale", "rescale_mode") + extra
                  if f"{prefix}_{name}" in infotext}
        block_list = str(infotext.get(f"{prefix}_block_list", "")).strip()
        block = BLOCK_LETTERS.get(str(infotext.get(f"{prefix}_block", "middle")))
        block_id = str(infotext.get(f"{prefix}_block_id", "0")).split(".")[0]
        values["layers"] = block_list or f"{block}{block_id}"
        if str(infotext.get(f"{prefix}_hr_override", "")).lower() == "true" and f"{prefix}_hr_scale" in infotext:
            values.update(hires="own", hires_scale=infotext[f"{prefix}_hr_scale"])
        return values

    return read


def _pag_other_keys(infotext: dict) -> Optional[dict]:
    """Forge's built-in PAG (`pagi_*`: start and end are fractions of the steps, as ours) or pamparamm's."""
    if str(infotext.get("pagi_enabled", "")).lower() == "true":
        names = {"pagi_scale": "scale", "pagi_start_step": "start", "pagi_end_step": "end"}
        return {name: infotext[key] for key, name in names.items() if key in infotext}
    return _pamparamm_keys("pag")(infotext)


@dataclass(frozen=True)
class PerturbedParams(StepSchedule):
    """The fields PAG and SEG share; positional script arguments come in field order."""

    enabled: bool = False
    scale: float = 3.0
    start: float = 0.0
    end: float = 1.0
    hires: str = "same"
    hires_scale: float = 3.0
    layers: str = "m0"
    rescale: float = 0.0
    rescale_mode: str = "full"


@dataclass(frozen=True)
class PagParams(PerturbedParams):
    """Perturbed-Attention Guidance for one generation."""

    CHANGE: ClassVar[str] = "identity"  # its attention change (perturbation.Change.kind)
    METHOD: ClassVar[Method] = Method(
        key="pag", abbreviation="PAG", title="Perturbed-Attention Guidance", ranges=COMMON_RANGES,
        infotext_keys=_infotext_keys("PAG", PAG_FIELDS), always_written=("scale",),
        choices={"rescale_mode": RESCALE_MODES}, texts={"layers": normalised_layers}, other_keys=_pag_other_keys)


@dataclass(frozen=True)
class SegParams(PerturbedParams):
    """Smoothed Energy Guidance for one generation: PAG's fields and the blur sigma, last."""

    CHANGE: ClassVar[str] = "smoothed_query"
    METHOD: ClassVar[Method] = Method(
        key="seg", abbreviation="SEG", title="Smoothed Energy Guidance",
        ranges={**COMMON_RANGES, "blur_sigma": (-math.inf, 9999.0)}, infotext_keys=_infotext_keys("SEG", SEG_FIELDS),
        always_written=("scale", "blur_sigma"), choices={"rescale_mode": RESCALE_MODES},
        texts={"layers": normalised_layers}, other_keys=_pamparamm_keys("seg", ("blur_sigma",)))

    blur_sigma: float = INFINITE_BLUR

    def __post_init__(self):
        object.__setattr__(self, "blur_sigma", _blur_sigma(self.blur_sigma))
