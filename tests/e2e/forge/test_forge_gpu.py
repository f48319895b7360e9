"""The case contract in a real Forge webui on a CUDA GPU, in its default half precision, at SD1.5 512²
(batch 2) and SDXL 1024², and ours beside the built-in SAG at the same seed.

Runs only with ``SAG_E2E_DEVICE=cuda`` (``tests/e2e/gpu/run.sh forge-contract`` sets Forge up on a GPU
machine); the checkpoints are ``sd15`` and ``sdxl`` (every part at the real sizes, random weights).
"""
from __future__ import annotations

import os

import pytest

from e2e.sag_api import BASE, check_sag_case
from e2e.forge.test_forge_host import ours_beside_the_builtin
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
    ours_vs_theirs, ours_vs_off, _ = ours_beside_the_builtin(webui, CASES[checkpoint], record_property,
                                                             label=f"{checkpoint}: ")
    assert ours_vs_theirs < 0.1 * ours_vs_off
