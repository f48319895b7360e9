"""Stand-in of modules.scripts: the Script base class as an AlwaysVisible script sees it."""
from collections import namedtuple

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []  # the loaded script files; the X/Y/Z plot's is added by tests that need it


def script_classes(module) -> list:
    """The Scripts the webui registers from a loaded script file (modules/scripts.py `load_scripts`): every
    class in the module's namespace that subclasses Script, imported ones too."""
    return [value for value in module.__dict__.values() if isinstance(value, type) and issubclass(value, Script)]


class Script:
    infotext_fields = None
    paste_field_names = None

    def elem_id(self, item_id):
        return f"script_txt2img_self-attention_guidance_{item_id}"
