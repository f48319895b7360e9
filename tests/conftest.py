"""Test setup: the stand-in of the webui host (tests/webui_standin, not the webui) provides `modules`."""
import sys
from pathlib import Path

import pytest

STANDIN = Path(__file__).parent / "webui_standin"
sys.path.insert(0, str(STANDIN))


@pytest.fixture
def host():
    """The stand-in host with a fresh SD1-layout model, default options, and SAG's callbacks registered."""
    from modules import script_callbacks, sd_unet, shared
    from sag_ext import ui
    from sag_ext.hosts import a1111
    from standin_model import StandInSDModel
    from harness.unets import CONTEXT_DIM, sd1_unet

    script_callbacks.clear_callbacks()
    shared.opts = shared.default_opts()
    shared.state.interrupted = False
    sd_unet.current_unet = None
    shared.sd_model = StandInSDModel(sd1_unet(), CONTEXT_DIM)
    ui.register_callbacks()
    a1111.adapter().register_callbacks()
    yield shared
    script_callbacks.clear_callbacks()
