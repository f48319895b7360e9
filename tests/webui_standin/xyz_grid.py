"""Stand-in of the webui's scripts/xyz_grid.py: the parts an extension uses to add axes."""
from collections import namedtuple

AxisOption = namedtuple("AxisOption", ["label", "type", "apply", "format_value", "confirm", "cost", "choices"],
                        defaults=(None, None, 0.0, None))
axis_options = [AxisOption("Nothing", str, lambda p, x, xs: None)]


def boolean_choice(reverse=False):
    def choice():
        return ["False", "True"] if reverse else ["True", "False"]
    return choice


class Script:
    """The X/Y/Z plot's Script class; only its module name matters to extensions."""


Script.__module__ = "xyz_grid.py"
