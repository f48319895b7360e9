"""Dynamic Thresholding (mcmonkeyprojects/sd-dynamic-thresholding): it rewrites the CFG combine."""
from __future__ import annotations

import pytest

from e2e.neighbours.neighbourhood import BOTH_ORDERS, assert_load_order, check_alongside, needs, with_script
from e2e.sag_api import BASE


pytestmark = pytest.mark.e2e

DYNTHRES_TITLE = "Dynamic Thresholding (CFG Scale Fix)"
# [enabled, mimic_scale, threshold_percentile, mimic_mode, mimic_scale_min, cfg_mode, cfg_scale_min,
#  sched_val, separate_feature_channels, scaling_startpoint, variability_measure, interpolate_phi]
DYNTHRES_ARGS = [True, 3.0, 99.0, "Constant", 0.0, "Constant", 0.0, 4.0, True, "MEAN", "AD", 1.0]


@BOTH_ORDERS
@needs("dynthres")
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_dynamic_thresholding(neighbourhood, sampler):
    webui = neighbourhood
    assert_load_order(webui, DYNTHRES_TITLE)
    payload = {**BASE, "cfg_scale": 12, "sampler_name": sampler}
    check_alongside(webui, "Dynamic thresholding", payload, with_script(payload, DYNTHRES_TITLE, DYNTHRES_ARGS),
                    infotext_has=["Dynamic thresholding enabled: True"], restores=False)
