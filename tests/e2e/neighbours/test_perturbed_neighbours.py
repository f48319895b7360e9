"""PAG and SEG, with SAG, beside each neighbour of this folder: all three methods on together keep the case
contract with the neighbour enabled (the neighbours' own files hold their arguments and what each does)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from e2e.neighbours.neighbourhood import AFTER_ONLY, BOTH_ORDERS, checkpoint, gradient, needs, with_script
from e2e.neighbours.test_dynamic_thresholding import DYNTHRES_ARGS, DYNTHRES_TITLE
from e2e.neighbours.test_freeu import FREEU_ARGS, FREEU_TITLE
from e2e.neighbours.test_hypertile import HYPERTILE
from e2e.neighbours.test_kohya_hiresfix import KOHYA_ARGS, KOHYA_TITLE
from e2e.neighbours.test_nested_pass import NESTED_TITLE
from e2e.neighbours.test_tiled_diffusion import TILED_DIFFUSION_ARGS, TILED_DIFFUSION_TITLE
from e2e.neighbours.test_ultimate_sd_upscale import USDU_ARGS, USDU_TITLE
from e2e.perturbed_cases import BOTH
from e2e.sag_api import BASE, OFF, TITLE, check_sag_case, generate, inpaint_mask, options

pytestmark = pytest.mark.e2e

ALL_THREE = {TITLE: [True, 0.8], **BOTH}
SD1_256 = {**BASE, "width": 256, "height": 256}


@BOTH_ORDERS
@pytest.mark.parametrize("neighbour,payload", [
    pytest.param("kohya", with_script(SD1_256, KOHYA_TITLE, KOHYA_ARGS), marks=needs("kohya"), id="kohya"),
    pytest.param("dynthres", with_script({**BASE, "cfg_scale": 12}, DYNTHRES_TITLE, DYNTHRES_ARGS),
                 marks=needs("dynthres"), id="dynthres"),
    pytest.param("freeu", with_script(BASE, FREEU_TITLE, FREEU_ARGS), marks=needs("freeu"), id="freeu"),
    pytest.param("tiled_diffusion", with_script({**BASE, "width": 256, "height": 208}, TILED_DIFFUSION_TITLE,
                                                TILED_DIFFUSION_ARGS), marks=needs("tiled_diffusion"), id="tiled_diffusion"),
    pytest.param("nested", with_script(BASE, NESTED_TITLE, [True, json.dumps(OFF)]), id="nested_pass"),
])
def test_txt2img_beside(neighbourhood, neighbour, payload):
    check_sag_case(neighbourhood, "txt2img", payload, on_args=ALL_THREE)


@BOTH_ORDERS
@needs("usdu")
def test_ultimate_sd_upscale(neighbourhood):
    payload = {**BASE, "width": 208, "height": 144, "denoising_strength": 0.5, "init_images": [gradient((112, 80))],
               "script_name": USDU_TITLE, "script_args": USDU_ARGS}
    check_sag_case(neighbourhood, "img2img", payload, on_args=ALL_THREE)


@AFTER_ONLY
@pytest.mark.parametrize("model,size", [("sd1_tiny", 256), ("sdxl_tiny", 512)])
def test_hypertile(neighbourhood, model, size):
    """Hypertile splits self-attention's tokens into tiles in the top levels and leaves the middle block whole:
    there all three work (SEG on a layer it tiles steps aside with one line: SEG's blur needs the grid)."""
    with checkpoint(neighbourhood, model), options(neighbourhood, **HYPERTILE):
        check_sag_case(neighbourhood, "txt2img", {**BASE, "width": size, "height": size}, on_args=ALL_THREE)


SOFT_INPAINTING = "soft inpainting"
SOFT_INPAINTING_ARGS = [True, 1.0, 0.5, 4.0, 0.0, 0.5, 2.0]  # on, then the webui's defaults


@AFTER_ONLY
def test_soft_inpainting(neighbourhood):
    """The webui's built-in soft inpainting (img2img with a mask) blends the init image back in by each step's
    difference, through the denoiser's mask that SAG, PAG and SEG also read: it changes the inpainted image,
    and the three methods keep the case contract with it."""
    inpaint = {**BASE, "init_images": [gradient()], "mask": inpaint_mask(), "mask_blur": 4, "denoising_strength": 0.8}
    payload = with_script(inpaint, SOFT_INPAINTING, SOFT_INPAINTING_ARGS)
    plain, _ = generate(neighbourhood, "img2img", inpaint, OFF)
    soft, infos = generate(neighbourhood, "img2img", payload, OFF)
    assert "Soft inpainting enabled" in infos[0], infos[0]
    assert np.abs(soft[0] - plain[0]).max() > 0, "soft inpainting did not change the image"
    check_sag_case(neighbourhood, "img2img", payload, on_args=ALL_THREE)
