"""The case contract in a real Forge webui on a CUDA GPU, in its default half precision, at SD1.5 512²
(batch 2) and SDXL 1024², and ours beside the built-in SAG at the same seed.

Runs only with ``SAG_E2E_DEVICE=cuda`` (``tests/e2e/gpu/run.sh forge-contract`` sets Forge up on a GPU
machine); the checkpoints are ``sd15`` and ``sdxl`` (every part at the real sizes, random weights).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from e2e.sag_api import BASE, ON, TITLE, check_sag_case
from e2e.forge.test_forge_host import builtin, images_of, with_scripts
from harness.server import ForgeWebUI

pytestmark = pytest.mark.skipif(os.environ.get("SAG_E2E_DEVICE") != "cuda",
                                reason="GPU run: SAG_E2E_DEVICE=cuda (tests/e2e/gpu/run.sh forge-contract)")

CASES = {"sd15": {**BASE, "width": 512, "height": 512, "batch_size": 2, "steps": 12},
         "sdxl": {**BASE, "width": 1024, "height": 1024, "steps": 12}}


@pytest.fixture(scope="module", params=list(CASES))
def gpu_forge(request):
    with ForgeWebUI(device="cuda", checkpoint=request.param, layouts=(request.param,),
                    checkpoint_cache=os.environ.get("SD_WEBUI_TEST_CACHE")) as server:
        yield request.param, server


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_contract(gpu_forge, sampler):
    checkpoint, webui = gpu_forge
    case = {**CASES[checkpoint], "sampler_name": sampler}
    on, off = check_sag_case(webui, "txt2img", case, images_expected=case.get("batch_size", 1))
    for image in on + off:
        assert image.std() > 5, "a flat image (a NaN or an overflow that slipped through)"


def test_beside_the_builtin_sag(gpu_forge, record_property):
    checkpoint, webui = gpu_forge
    name, count = builtin(webui, "selfattentionguidance")
    case = CASES[checkpoint]
    off, _ = images_of(webui, with_scripts(case, {}))
    ours, _ = images_of(webui, with_scripts(case, {TITLE: ON}))
    theirs, _ = images_of(webui, with_scripts(case, {name: ON[:count]}))
    ours_vs_theirs = float(np.mean([np.abs(a - b).mean() for a, b in zip(ours, theirs)]))
    ours_vs_off = float(np.mean([np.abs(a - b).mean() for a, b in zip(ours, off)]))
    record_property("mean_abs_ours_vs_builtin", ours_vs_theirs)
    print(f"\n{checkpoint}: mean |ours - built-in| = {ours_vs_theirs:.4f}, |ours - off| = {ours_vs_off:.4f} (of 255)")
    assert ours_vs_theirs < 0.1 * ours_vs_off
