"""Loads scripts/sag.py as the webui does."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).parent.parent


def load_script_module():
    """Executes scripts/sag.py the way the webui loads a script file (a fresh module each time)."""
    spec = importlib.util.spec_from_file_location("sag.py", REPO / "scripts" / "sag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
