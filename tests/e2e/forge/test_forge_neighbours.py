"""SAG, PAG and SEG together beside the Forge hosts' integrated extensions that change the UNet, its
attention or the CFG step: each case must keep the contract (all three change the image, reproducibly,
and leave the off image alone) with the neighbour on; a method that steps aside fails it with its line."""
from __future__ import annotations

import pytest

from e2e.forge.test_forge_host import builtin, with_scripts
from e2e.sag_api import BASE, PAG, SEG, TITLE, check_sag_case

ALL_THREE = {TITLE: [True, 0.8], PAG: [True, 3.0], SEG: [{"scale": 3.0}]}
NEIGHBOURS = {  # case: (script title's start, its leading arguments, the request's changes)
    "freeu": ("freeu integrated", [True, 1.3, 1.4, 0.9, 0.2], {}),
    "kohya_hrfix_factor_1.5": ("kohya hrfix integrated", [True, 3, 1.5, 0.0, 0.5], {"width": 256, "height": 256}),
    "dynamic_thresholding": ("dynamicthresholding", [True, 7.0], {"cfg_scale": 12}),
    "latent_modifier": ("latentmodifier integrated", [True, 2.0], {}),
    "stylealign": ("stylealign integrated", [True, 1.0], {"batch_size": 2}),
    "never_oom": ("never oom integrated", [True, False], {}),
}


@pytest.mark.parametrize("case", list(NEIGHBOURS))
def test_all_three_methods_beside(webui, case):
    prefix, args, changes = NEIGHBOURS[case]
    name, _ = builtin(webui, prefix)
    payload = with_scripts({**BASE, **changes}, {name: args})
    check_sag_case(webui, "txt2img", payload, images_expected=changes.get("batch_size", 1), on_args=ALL_THREE)
