"""SAG on an SD2.x model in a real Forge-family webui: the ``sd21`` checkpoint (every part at SD2.1 768-v's
sizes, v-prediction; its middle block has 64-channel heads, linear transformers and a 1024-wide context).
The case contract on two samplers, and ours beside the built-in SAG where the host has one."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.conftest import kept_data_dir
from e2e.forge.test_forge_host import builtin, images_of, with_scripts
from e2e.sag_api import BASE, ON, TITLE, check_sag_case
from harness.server import ForgeWebUI, forge_from_env


def loads_sd2(webui_path) -> bool:
    """Whether the host can load an SD2.x model: Forge and Neo build a model from the diffusers config of
    its family in `backend/huggingface/` (Neo keeps none for SD2.x); reForge and Classic detect it in
    `ldm_patched`, which has SD2.x."""
    configs = webui_path / "backend" / "huggingface"
    return not configs.is_dir() or (configs / "stabilityai" / "stable-diffusion-2-1").is_dir()


@pytest.fixture(scope="module")
def sd2_webui(checkpoint_cache):
    webui_path, _ = forge_from_env()
    if not loads_sd2(webui_path):
        pytest.skip("this webui has no SD2.x model family (Forge Neo)")
    with ForgeWebUI(checkpoint="sd21", layouts=("sd21",), checkpoint_cache=checkpoint_cache,
                    data_dir=kept_data_dir("forge-sd2")) as server:
        yield server


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_sd2_contract(sd2_webui, sampler):
    check_sag_case(sd2_webui, "txt2img", {**BASE, "sampler_name": sampler})


def test_sd2_ours_and_the_builtin_sag_side_by_side(sd2_webui, record_property):
    name, count = builtin(sd2_webui, "selfattentionguidance")
    off, _ = images_of(sd2_webui, with_scripts(BASE, {}))
    ours, _ = images_of(sd2_webui, with_scripts(BASE, {TITLE: ON}))
    theirs, _ = images_of(sd2_webui, with_scripts(BASE, {name: ON[:count]}))
    ours_vs_off = np.abs(ours[0] - off[0]).mean()
    ours_vs_theirs = np.abs(ours[0] - theirs[0]).mean()
    record_property("mean_abs_ours_vs_builtin", float(ours_vs_theirs))
    print(f"\nSD2: mean |ours - built-in| = {ours_vs_theirs:.4f}, |ours - off| = {ours_vs_off:.4f} (of 255)")
    assert ours_vs_off > 1.0
    assert ours_vs_theirs < 0.05 * ours_vs_off
