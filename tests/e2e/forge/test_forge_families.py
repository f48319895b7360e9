"""SAG (and PAG with SEG) on the other model families in a real Forge-family webui on the CPU: ``sd21`` (every part at SD2.1
768-v's sizes, v-prediction; its middle block has 64-channel heads, linear transformers and a 1024-wide
context) and ``sdxl`` (every part at SDXL's sizes: ten transformers in the middle block, 20 heads, two text
towers and the ADM vector). The case contract on two samplers, and ours beside the built-in SAG where the
host has one; at 128 px the middle grid is 2x2 (SD2.1) and 4x4 (SDXL). And a model SAG cannot hook,
``ssd1b`` (SSD-1B's layout at its sizes: no transformer in the middle block): one console line, the image
unchanged."""
from __future__ import annotations

import pytest

from e2e.conftest import kept_data_dir
from e2e.forge.test_forge_host import ours_beside_the_builtin
from e2e.perturbed_cases import BOTH
from e2e.sag_api import BASE, STEP_ASIDE, check_sag_case, check_unchanged_with_one_line
from harness.server import ForgeWebUI, forge_from_env


def loads_sd2(webui_path) -> bool:
    """Whether the host can load an SD2.x model: Forge and Neo build a model from the diffusers config of
    its family in `backend/huggingface/` (Neo keeps none for SD2.x); reForge and Classic detect it in
    `ldm_patched`, which has SD2.x."""
    configs = webui_path / "backend" / "huggingface"
    return not configs.is_dir() or (configs / "stabilityai" / "stable-diffusion-2-1").is_dir()


@pytest.fixture(scope="module", params=["sd21", "sdxl"])
def family_webui(request, checkpoint_cache):
    webui_path, _ = forge_from_env()
    if request.param == "sd21" and not loads_sd2(webui_path):
        pytest.skip("this webui has no SD2.x model family (Forge Neo)")
    with ForgeWebUI(checkpoint=request.param, layouts=(request.param,), checkpoint_cache=checkpoint_cache,
                    data_dir=kept_data_dir(f"forge-{request.param}")) as server:
        yield request.param, server


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_contract(family_webui, sampler):
    _, webui = family_webui
    check_sag_case(webui, "txt2img", {**BASE, "sampler_name": sampler})


def test_pag_and_seg(family_webui):
    _, webui = family_webui
    check_sag_case(webui, "txt2img", {**BASE, "batch_size": 2}, images_expected=2, on_args=BOTH)


def test_ours_and_the_builtin_sag_side_by_side(family_webui, record_property):
    family, webui = family_webui
    ours_vs_theirs, ours_vs_off, _ = ours_beside_the_builtin(webui, BASE, record_property, label=f"{family}: ")
    assert ours_vs_off > 1.0
    assert ours_vs_theirs < 0.05 * ours_vs_off


# where the hosts list the model families they detect: Forge and Neo, then reForge and Classic
MODEL_LISTS = ("repositories/huggingface_guess/huggingface_guess/model_list.py",
               "modules_forge/packages/huggingface_guess/model_list.py", "ldm_patched/modules/supported_models.py")


def loads_ssd1b(webui_path) -> bool:
    """Whether the host detects SSD-1B: Forge and reForge list it; Neo and Classic do not."""
    lists = [webui_path / name for name in MODEL_LISTS]
    return any(path.is_file() and "class SSD1B(" in path.read_text() for path in lists)


@pytest.fixture(scope="module")
def ssd1b_webui(checkpoint_cache):
    webui_path, _ = forge_from_env()
    if not loads_ssd1b(webui_path):
        pytest.skip("this webui does not load SSD-1B (Forge Neo, Forge Classic)")
    with ForgeWebUI(checkpoint="ssd1b", layouts=("ssd1b",), checkpoint_cache=checkpoint_cache,
                    data_dir=kept_data_dir("forge-ssd1b")) as server:
        yield server


def test_a_model_without_a_middle_transformer_is_left_alone(ssd1b_webui):
    log = check_unchanged_with_one_line(ssd1b_webui, "txt2img", BASE)
    assert STEP_ASIDE in log and "no middle-block transformer" in log
