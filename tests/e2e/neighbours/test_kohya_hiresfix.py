"""Kohya hires fix (wcde/sd-webui-kohya-hiresfix): the middle block changes size between steps."""
from __future__ import annotations

import pytest

from e2e.neighbours.neighbourhood import BOTH_ORDERS, assert_load_order, check_alongside, needs, with_script
from e2e.sag_api import BASE


pytestmark = pytest.mark.e2e

KOHYA_TITLE = "Kohya Hires.fix"
# [enable, only_one_pass, d1, d2, s1, s2, scaler, downscale, upscale, smooth_scaling, early_out]:
# halve the UNet's top level for the first half of the steps, so the middle block runs at half size
# (a 2x2 grid instead of 4x4 at 256 px) and changes size between steps.
KOHYA_ARGS = [True, True, 3, 4, 0.5, 0.5, "bicubic", 0.5, 2.0, False, False]


@BOTH_ORDERS
@needs("kohya")
def test_kohya_hires_fix(neighbourhood):
    webui = neighbourhood
    assert_load_order(webui, KOHYA_TITLE)
    payload = {**BASE, "width": 256, "height": 256}
    check_alongside(webui, "Kohya hires fix", payload, with_script(payload, KOHYA_TITLE, KOHYA_ARGS),
                    infotext_has=["DSHF_s1"])
