"""The e2e contract in a real webui on a CUDA GPU, in the webui's half precision, at SD1.5 and SDXL UNet sizes,
for SAG and for PAG and SEG.

Runs only with ``SAG_E2E_DEVICE=cuda`` (``tests/e2e/gpu/run.sh`` sets it up on a GPU machine). Each
test group (``xdist_group``) is one webui with its own command-line flags, so ``pytest -n N --dist loadgroup``
runs them side by side. The webui's NaN check stays on: a NaN image fails the request. The checkpoints are ``sd1_wide`` (SD1.5's
UNet) and ``sdxl_full`` (SDXL's UNet), with random weights and small text models and VAE.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from harness.server import WebUI
from e2e.perturbed_cases import HALF_PRECISION_METHODS, in_call_against_separate
from e2e.sag_api import BASE, OFF, LogWatch, check_sag_case, generate
from e2e.test_e2e_api_matrix import init_image, mask_image

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.environ.get("SAG_E2E_DEVICE") != "cuda",
                                                  reason="GPU run: SAG_E2E_DEVICE=cuda (tests/e2e/gpu/run.sh)")]

SD15, SDXL = "sd1_wide", "sdxl_full"
SD15_CASE = {**BASE, "width": 512, "height": 512, "batch_size": 2, "steps": 12}
SDXL_CASE = {**BASE, "width": 1024, "height": 1024, "steps": 12}
OPTIMIZATIONS = ["sdp - scaled dot product", "sdp-no-mem - scaled dot product without memory efficient attention",
                 "Doggettx", "sub-quadratic", "V1 - original v1", "InvokeAI"]


def webui_with(checkpoint: str, *flags: str) -> WebUI:
    """A webui on the GPU with `checkpoint` loaded and `flags`; starts and stops as a context manager.
    ``SAG_E2E_ATTENTION`` names its cross-attention optimization (default: the webui's Automatic)."""
    attention = os.environ.get("SAG_E2E_ATTENTION")
    return WebUI(checkpoint=checkpoint, layouts=(SD15, SDXL), device="cuda", extra_args=flags,
                 checkpoint_cache=os.environ.get("SD_WEBUI_TEST_CACHE"),
                 options={"cross_attention_optimization": attention} if attention else None)


def check_images_are_pictures(images) -> None:
    """Not black, not one colour: what a NaN or an overflow that slipped through would look like."""
    for image in images:
        assert image.std() > 5, "a flat image"


@pytest.fixture(scope="class")
def webui(request):
    """The webui of the test class: its `server` attribute is (checkpoint, *flags)."""
    with webui_with(*request.cls.server) as server:
        yield server


@pytest.mark.xdist_group("sd15-samplers")
class TestSD15Samplers:
    server = (SD15,)

    @pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DDIM", "UniPC"])
    def test_txt2img_512_batch_2(self, webui, sampler):
        on, off = check_sag_case(webui, "txt2img", {**SD15_CASE, "sampler_name": sampler}, images_expected=2)
        check_images_are_pictures(on + off)


@pytest.mark.xdist_group("sd15-inpaint-hires")
class TestSD15InpaintAndHires:
    server = (SD15,)

    def test_inpaint(self, webui):
        payload = {**SD15_CASE, "batch_size": 1, "init_images": [init_image((512, 512))], "mask": mask_image((512, 512)),
                   "denoising_strength": 0.9, "inpainting_fill": 1, "mask_blur": 0, "inpaint_full_res": False}
        on, off = check_sag_case(webui, "img2img", payload)
        np.testing.assert_array_equal(on[0][:, :200], off[0][:, :200])  # the kept half (left of the mask's edge)
        check_images_are_pictures(on)

    def test_hires_fix(self, webui):
        payload = {**SD15_CASE, "batch_size": 1, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
                   "denoising_strength": 0.6, "hr_second_pass_steps": 6}
        on, _ = check_sag_case(webui, "txt2img", payload)
        assert on[0].shape == (768, 768, 3)


@pytest.mark.xdist_group("sd15-optimizations")
class TestSD15AttentionOptimizations:
    server = (SD15,)

    @pytest.mark.parametrize("optimization", OPTIMIZATIONS)
    def test_euler_a(self, webui, optimization):
        webui.post("/sdapi/v1/options", {"cross_attention_optimization": optimization})
        check_sag_case(webui, "txt2img", SD15_CASE, images_expected=2)


@pytest.mark.xdist_group("sdxl")
class TestSDXL:
    server = (SDXL,)

    def test_txt2img_1024(self, webui):
        on, off = check_sag_case(webui, "txt2img", SDXL_CASE)
        check_images_are_pictures(on + off)

    def test_2048_at_scale_5_stays_finite(self, webui):
        """SAG's own fp16 arithmetic at the largest grid and the largest scale: SAG acts, nothing overflows."""
        payload = {**SDXL_CASE, "width": 2048, "height": 2048, "steps": 8}
        watch = LogWatch(webui)
        off, _ = generate(webui, "txt2img", payload, OFF)
        on, infos = generate(webui, "txt2img", payload, [True, 5.0, 2.0, 1.0])
        log = watch.new_text()
        assert "[SAG]" not in log and "Traceback" not in log, log[-4000:]
        assert "SAG Scale: 5.0" in infos[0] and np.abs(on[0] - off[0]).max() > 0
        check_images_are_pictures(on)


@pytest.mark.xdist_group("sd15-perturbed")
class TestSD15Perturbed:
    """PAG and SEG, their rows in the webui's own UNet call (the setting's default), and in a call of their own."""
    server = (SD15,)

    @HALF_PRECISION_METHODS
    def test_contract(self, webui, methods):
        on, off = check_sag_case(webui, "txt2img", SD15_CASE, images_expected=2, on_args=methods)
        check_images_are_pictures(on + off)

    def test_rows_in_the_webui_call_beside_a_call_of_their_own(self, webui, record_property):
        in_call_against_separate(webui, SD15_CASE, record_property, "sd15", half_precision=True)


@pytest.mark.xdist_group("sdxl-perturbed")
class TestSDXLPerturbed:
    server = (SDXL,)

    @HALF_PRECISION_METHODS
    def test_contract(self, webui, methods):
        on, off = check_sag_case(webui, "txt2img", SDXL_CASE, on_args=methods)
        check_images_are_pictures(on + off)

    def test_rows_in_the_webui_call_beside_a_call_of_their_own(self, webui, record_property):
        in_call_against_separate(webui, SDXL_CASE, record_property, "sdxl", half_precision=True)


@pytest.mark.parametrize("flag", [pytest.param(flag, marks=pytest.mark.xdist_group(flag))
                                  for flag in ("--upcast-sampling", "--no-half-vae", "--medvram", "--lowvram")])
def test_sd15_euler_a_with_flag(flag):
    with webui_with(SD15, flag) as webui:
        on, off = check_sag_case(webui, "txt2img", SD15_CASE, images_expected=2)
        check_images_are_pictures(on + off)


@pytest.mark.xdist_group("--medvram-sdxl")
def test_sdxl_with_medvram_sdxl():
    with webui_with(SDXL, "--medvram-sdxl") as webui:
        check_sag_case(webui, "txt2img", SDXL_CASE)
