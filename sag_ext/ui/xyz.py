"""X/Y/Z plot axes. Each axis sets a `sag_<field>` attribute on the cell's processing object, which
the generation start reads over the panel's values (the same path for panel, X/Y/Z and API)."""
from ..core.params import ARG_NAMES

AXIS_LABELS = {"enabled": "Enabled", "scale": "Scale", "blur_sigma": "Blur sigma", "threshold": "Threshold",
               "start": "Start", "end": "End"}
PREFIX = "[SAG] "


def p_attribute(name: str) -> str:
    return f"sag_{name}"


def overrides(p) -> dict:
    """The SAG fields an X/Y/Z cell set on `p`."""
    return {name: getattr(p, p_attribute(name)) for name in ARG_NAMES if hasattr(p, p_attribute(name))}


def _apply(name):
    def apply(p, value, values):
        setattr(p, p_attribute(name), value == "True" if name == "enabled" else value)
        if name != "enabled":
            setattr(p, p_attribute("enabled"), True)  # an axis on a SAG parameter implies SAG on
    return apply


def enabled_choices():
    """The Enabled axis's values, as the webui's own boolean axes list them (not every host has its helper)."""
    return ["False", "True"]


def add_axes(xyz_grid) -> None:
    """Adds the [SAG] axes to the X/Y/Z plot script's module once (idempotent)."""
    present = {option.label for option in xyz_grid.axis_options}
    for name, label in AXIS_LABELS.items():
        if PREFIX + label in present:
            continue
        if name == "enabled":
            option = xyz_grid.AxisOption(PREFIX + label, str, _apply(name), choices=enabled_choices)
        else:
            option = xyz_grid.AxisOption(PREFIX + label, float, _apply(name))
        xyz_grid.axis_options.append(option)


def add_axes_to_script() -> None:
    """Adds the axes to the loaded X/Y/Z plot script, if there is one."""
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
            add_axes(data.module)
