"""FreeU (ljleb/sd-webui-freeu)."""
from __future__ import annotations

import pytest

from e2e.neighbours.neighbourhood import BOTH_ORDERS, assert_load_order, needs, with_script
from e2e.sag_api import BASE, ON, check_sag_case, generate


pytestmark = pytest.mark.e2e

FREEU_TITLE = "FreeU"
FREEU_ARGS = [{"enable": True, "start_ratio": 0.0, "stop_ratio": 1.0, "transition_smoothness": 0.0, "version": "2",
               "stage_infos": [{"backbone_factor": 1.2, "skip_factor": 0.9}, {"backbone_factor": 1.4, "skip_factor": 0.2},
                               {"backbone_factor": 1.1, "skip_factor": 1.0}]}]


@BOTH_ORDERS
@needs("freeu")
def test_freeu(neighbourhood):
    """FreeU wraps the UNet's `th.cat` for the whole process and counts steps in cfg_after_cfg. Its
    stages are picked by channel width (1280/640/320), which the tiny test models (128/64/32) do not
    have, so here it is loaded and enabled but leaves the image alone: this checks coexistence only."""
    webui = neighbourhood
    assert_load_order(webui, FREEU_TITLE)
    freeu = with_script(BASE, FREEU_TITLE, FREEU_ARGS)
    check_sag_case(webui, "txt2img", freeu)
    _, infos = generate(webui, "txt2img", freeu, ON)
    assert "FreeU Stages" in infos[0]
