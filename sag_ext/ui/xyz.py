"""X/Y/Z plot axes. Each axis sets an attribute of the method's field (`p_attribute`) on the cell's processing
object, which the generation start reads over the panel's values (the same path for panel, X/Y/Z and API)."""
from ..core.params import SagParams, arg_names
from ..core.perturbed_params import PagParams, SegParams

AXES = {  # the fields each method has an axis for, and the axis labels
    SagParams: {"enabled": "Enabled", "scale": "Scale", "blur_sigma": "Blur sigma", "threshold": "Threshold",
                "start": "Start", "end": "End"},
    PagParams: {"enabled": "Enabled", "scale": "Scale", "start": "Start", "end": "End", "layers": "Layers",
                "rescale": "CFG rescale"},
    SegParams: {"enabled": "Enabled", "scale": "Scale", "blur_sigma": "Blur sigma", "start": "Start", "end": "End",
                "layers": "Layers", "rescale": "CFG rescale"},
}


def prefix(params_class) -> str:
    return f"[{params_class.METHOD.abbreviation}] "


def p_attribute(params_class, name: str) -> str:
    """`sag_scale` for SAG (as always); `sd_webui_sag_pag_scale`, ... for PAG and SEG: sd-webui-incantations'
    own axes set `pag_scale`, `seg_blur_sigma`, ... on the same object."""
    key = params_class.METHOD.key
    return f"{key}_{name}" if key == "sag" else f"sd_webui_sag_{key}_{name}"


def overrides(p, params_class=SagParams) -> dict:
    """The method's fields an X/Y/Z cell set on `p`."""
    return {name: getattr(p, p_attribute(params_class, name)) for name in arg_names(params_class)
            if hasattr(p, p_attribute(params_class, name))}


def _apply(params_class, name):
    def apply(p, value, values):
        setattr(p, p_attribute(params_class, name), value == "True" if name == "enabled" else value)
        if name != "enabled":
            setattr(p, p_attribute(params_class, "enabled"), True)  # an axis on a parameter implies the method on
    return apply


def enabled_choices():
    """The Enabled axes' values, as the webui's own boolean axes list them (not every host has its helper)."""
    return ["False", "True"]


def add_axes(xyz_grid) -> None:
    """Adds the methods' axes to the X/Y/Z plot script's module once (idempotent)."""
    present = {option.label for option in xyz_grid.axis_options}
    for params_class, axes in AXES.items():
        for name, label in axes.items():
            label = prefix(params_class) + label
            if label in present:
                continue
            if name == "enabled":
                option = xyz_grid.AxisOption(label, str, _apply(params_class, name), choices=enabled_choices)
            else:
                kind = str if name in params_class.METHOD.texts else float
                option = xyz_grid.AxisOption(label, kind, _apply(params_class, name))
            xyz_grid.axis_options.append(option)


def add_axes_to_script() -> None:
    """Adds the axes to the loaded X/Y/Z plot script, if there is one."""
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
            add_axes(data.module)
