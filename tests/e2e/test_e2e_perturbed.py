"""PAG and SEG in the real webui: the cases every host runs (perturbed_cases.py), the sampler families, the
CFG denoiser's batch layouts and options (their rows in the webui's own UNet call in each, against a call
of their own), hires fix, AND prompts, SD2.1, SDXL and a checkpoint change."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.perturbed_cases import (BOTH, PAG_ON, in_call_against_separate,  # noqa: F401
                                 test_bad_arguments_answer_422, test_batch_of_two_with_dict_arguments,
                                 test_cfg_1_still_guided, test_contract, test_img2img_and_inpaint,
                                 test_layers_the_model_lacks_step_aside_with_one_line,
                                 test_rows_in_the_webui_call_give_the_separate_pass_image)
from e2e.sag_api import BASE, OFF, PAG, SEG, TITLE, LogWatch, check_sag_case, generate, options
from e2e.test_e2e_api_matrix import LONG_PROMPT, SAMPLERS, sdxl  # noqa: F401 (a fixture)
from e2e.conftest import kept_data_dir
from harness import lora
from harness.server import WebUI

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers(webui, sampler):
    check_sag_case(webui, "txt2img", {**BASE, "sampler_name": sampler}, on_args=BOTH)


@pytest.mark.parametrize("case,payload,count", [
    ("batch 3, n_iter 2", {"batch_size": 3, "n_iter": 2}, 6),
    ("long prompt", {"prompt": LONG_PROMPT}, 1),
    ("non-square", {"width": 200, "height": 136}, 1),
    ("hires own scale", {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}, 1),
    ("NGMS", {"s_min_uncond": 50}, 1),
])
def test_layouts(webui, case, payload, count):
    on_args = {PAG: [True, 3.0, 0.0, 1.0, "own", 1.0], SEG: [{"hires": "off"}]} if "hires" in case else BOTH
    check_sag_case(webui, "txt2img", {**BASE, **payload}, images_expected=count, on_args=on_args)


LAYOUTS = {  # the CFG denoiser's: chunks of B rows, cond and uncond padded to one length, a separate uncond call
    "batch_cond_uncond off": ({"batch_cond_uncond": False}, {}),
    "padded long prompt": ({"pad_cond_uncond": True}, {"prompt": LONG_PROMPT}),
    "long prompt, uncond apart": ({"pad_cond_uncond": False}, {"prompt": LONG_PROMPT}),
    "skip early CFG": ({"skip_early_cond": 0.5}, {}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_webui_options(webui, layout):
    changed, payload = LAYOUTS[layout]
    with options(webui, **changed):
        check_sag_case(webui, "txt2img", {**BASE, **payload, "batch_size": 2}, images_expected=2, on_args=BOTH)


@pytest.mark.parametrize("layout", list(LAYOUTS)[:3])
def test_rows_in_the_webui_call_in_each_layout(webui, layout, record_property):
    changed, payload = LAYOUTS[layout]
    with options(webui, **changed):
        in_call_against_separate(webui, {**BASE, **payload, "width": 256, "height": 256, "batch_size": 2},
                                 record_property, layout)


def test_and_prompt_steps_aside_with_one_line_each(webui):
    """AND prompts (several positive prompts per image) are not supported: PAG and SEG leave the image as it is
    without them, with one console line each."""
    case = {**BASE, "prompt": "a photo of a cat AND a photo of a dog :0.7"}
    off, _ = generate(webui, "txt2img", case, OFF)
    watch = LogWatch(webui)
    on, infotexts = generate(webui, "txt2img", case, BOTH)
    log = watch.new_text()
    np.testing.assert_array_equal(on[0], off[0])
    assert log.count("[PAG]") == 1 and log.count("[SEG]") == 1 and "AND prompts" in log, log[-3000:]
    assert "PAG Scale" not in infotexts[0] and "SEG Scale" not in infotexts[0]


@pytest.mark.parametrize("case,payload", [
    ("Euler a", {}),
    ("DDIM", {"sampler_name": "DDIM"}),
    ("UniPC batch 2", {"sampler_name": "UniPC", "batch_size": 2}),
    ("hires", {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}),
])
def test_sdxl(sdxl, case, payload):
    check_sag_case(sdxl, "txt2img", {**BASE, **payload}, images_expected=payload.get("batch_size", 1), on_args=BOTH)


@pytest.fixture(scope="module")
def sd21_webui(checkpoint_cache):
    """A webui of its own with `sd21`: every part at SD2.1 768-v's sizes, v-prediction (2.6 GB)."""
    with WebUI(checkpoint="sd21", layouts=("sd21",), checkpoint_cache=checkpoint_cache,
               data_dir=kept_data_dir("sd21")) as server:
        yield server


def test_sd21_v_prediction(sd21_webui, record_property):
    """SD2.x: a v-prediction model with linear transformers and 64-channel heads; all three methods, and PAG's
    and SEG's rows in the webui's call against a call of their own."""
    payload = {**BASE, "width": 256, "height": 256}
    check_sag_case(sd21_webui, "txt2img", payload, on_args={TITLE: [True, 0.8], **BOTH})
    in_call_against_separate(sd21_webui, payload, record_property, "SD2.1")


def test_sdxl_rows_in_the_webui_call(sdxl, record_property):
    in_call_against_separate(sdxl, {**BASE, "width": 256, "height": 256, "batch_size": 2}, record_property, "SDXL")


def test_all_three_with_a_lora(webui):
    """A LoRA (random, rank 4) on the middle block's and the first output level's transformers, the layers the
    methods hook: the webui's Lora extension patches their forward, the methods change that model's image."""
    lora.write_lora(webui.data_dir / "models" / "Lora", "sd1_tiny")
    webui.post("/sdapi/v1/refresh-loras", {})
    with_lora = {**BASE, "prompt": f"{BASE['prompt']} <lora:{lora.name('sd1_tiny')}:1>"}
    plain, _ = generate(webui, "txt2img", BASE, OFF)
    _, off = check_sag_case(webui, "txt2img", with_lora, on_args={TITLE: [True, 0.8], **BOTH})
    assert np.abs(off[0] - plain[0]).max() > 0, "the LoRA did not change the image"


def test_checkpoint_change_between_requests(webui):
    for name in ("sd1_tiny", "sdxl_tiny", "sd1_tiny"):
        webui.use_checkpoint(name)
        check_sag_case(webui, "txt2img", BASE, on_args={PAG: PAG_ON})
