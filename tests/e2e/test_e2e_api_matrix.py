"""The HTTP API matrix against a real webui: every case must satisfy `check_sag_case`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.hypernetwork import NAME as HYPERNETWORK
from e2e.sag_api import BASE, OFF, ON, SIZE, LogWatch, check_sag_case, encode, generate, options

pytestmark = pytest.mark.e2e

LONG_PROMPT = ", ".join(["a very detailed photo of a small orange cat sitting on a wooden chair"] * 8)


@pytest.fixture
def sd1(webui):
    webui.use_checkpoint("sd1_tiny")
    return webui


@pytest.fixture
def sdxl(webui):
    webui.use_checkpoint("sdxl_tiny")
    yield webui
    webui.use_checkpoint("sd1_tiny")


def init_image(size=(SIZE, SIZE)):
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return encode(Image.fromarray(gradient.astype(np.uint8)))


def mask_image(size=(SIZE, SIZE)):
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[:, size[0] // 2:] = 255  # repaint the right half
    return encode(Image.fromarray(pixels))


SAMPLERS = ["Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM", "PLMS", "UniPC", "LCM"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sd1_txt2img_samplers(sd1, sampler):
    check_sag_case(sd1, "txt2img", {**BASE, "sampler_name": sampler})


@pytest.mark.parametrize("case,payload,count", [
    ("batch 3, n_iter 2", {"batch_size": 3, "n_iter": 2}, 6),
    ("AND prompt", {"prompt": "a photo of a cat AND a photo of a dog :0.7"}, 1),
    ("long prompt", {"prompt": LONG_PROMPT}, 1),
    ("CFG 1", {"cfg_scale": 1}, 1),
    ("non-square", {"width": 200, "height": 136}, 1),
    ("hires latent", {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}, 1),
    ("hires lanczos", {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.6,
                       "hr_sampler_name": "DDIM"}, 1),
    ("NGMS", {"s_min_uncond": 50}, 1),
])
def test_sd1_txt2img_layouts(sd1, case, payload, count):
    check_sag_case(sd1, "txt2img", {**BASE, **payload}, images_expected=count)


@pytest.mark.parametrize("changed", [{"batch_cond_uncond": False}, {"pad_cond_uncond": True},
                                     {"skip_early_cond": 0.5}])
def test_sd1_options(sd1, changed):
    with options(sd1, **changed):
        check_sag_case(sd1, "txt2img", {**BASE, "prompt": LONG_PROMPT, "batch_size": 2}, images_expected=2)


def test_skip_early_cond_everywhere_is_the_off_image(sd1):
    with options(sd1, skip_early_cond=1.0):
        on, _ = generate(sd1, "txt2img", BASE, ON)
        off, _ = generate(sd1, "txt2img", BASE, OFF)
    np.testing.assert_array_equal(on[0], off[0])


def test_sd1_hypernetwork(sd1):
    """A hypernetwork in the prompt (the harness's random one, with layers for sd1_tiny's context width 64
    and middle-block width 128): the webui's attention forwards feed every attention's `to_k`/`to_v`
    through it, the middle block's self-attention too, and so does SAG's capture."""
    if HYPERNETWORK not in [item["name"] for item in sd1.get("/sdapi/v1/hypernetworks")]:
        pytest.skip(f"{HYPERNETWORK} is not installed (python harness/hypernetwork.py <models/hypernetworks>)")
    watch = LogWatch(sd1)
    plain, _ = generate(sd1, "txt2img", BASE, OFF)
    _, off = check_sag_case(sd1, "txt2img", {**BASE, "prompt": f"{BASE['prompt']} <hypernet:{HYPERNETWORK}:1>"})
    assert np.abs(off[0] - plain[0]).max() > 0, "the hypernetwork did not change the image"
    assert "rror" not in watch.new_text(), watch.new_text()[-3000:]


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_sd1_img2img(sd1, sampler):
    check_sag_case(sd1, "img2img", {**BASE, "sampler_name": sampler, "init_images": [init_image()],
                                    "denoising_strength": 0.75, "batch_size": 2}, images_expected=2)


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_sd1_inpainting_keeps_the_unmasked_area(sd1, sampler):
    payload = {**BASE, "sampler_name": sampler, "init_images": [init_image()], "mask": mask_image(),
               "denoising_strength": 0.9, "inpainting_fill": 1, "mask_blur": 0, "inpaint_full_res": False}
    on, off = check_sag_case(sd1, "img2img", payload)
    kept = slice(0, SIZE // 2 - 8)  # left half, away from the VAE's reach across the mask edge
    assert np.abs(on[0][:, kept] - off[0][:, kept]).mean() < np.abs(on[0][:, SIZE // 2 + 8:] - off[0][:, SIZE // 2 + 8:]).mean()


def test_checkpoint_change_between_requests(webui):
    for name in ("sd1_tiny", "sdxl_tiny", "sd1_tiny"):
        webui.use_checkpoint(name)
        check_sag_case(webui, "txt2img", BASE)


@pytest.mark.parametrize("case,payload,count", [
    ("Euler a", {}, 1),
    ("DDIM", {"sampler_name": "DDIM"}, 1),
    ("UniPC batch 2", {"sampler_name": "UniPC", "batch_size": 2}, 2),
    ("long prompt", {"prompt": LONG_PROMPT}, 1),
    ("hires", {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}, 1),
    ("refiner switch", {"refiner_checkpoint": "sd1_tiny", "refiner_switch_at": 0.5, "steps": 6}, 1),
])
def test_sdxl_txt2img(sdxl, case, payload, count):
    check_sag_case(sdxl, "txt2img", {**BASE, **payload}, images_expected=count)


def test_sdxl_img2img(sdxl):
    check_sag_case(sdxl, "img2img", {**BASE, "init_images": [init_image()], "denoising_strength": 0.75})
