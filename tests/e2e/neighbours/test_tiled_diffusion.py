"""Tiled Diffusion / MultiDiffusion (pkuliyi2015/multidiffusion-upscaler-for-automatic1111)."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.neighbours.neighbourhood import BOTH_ORDERS, assert_load_order, needs, with_script
from e2e.sag_api import BASE, OFF, ON, LogWatch, check_works_or_steps_aside, generate


pytestmark = pytest.mark.e2e

TILED_DIFFUSION_TITLE = "Tiled Diffusion"
# [enabled, method, overwrite_size, keep_input_size, image_width, image_height, tile_width, tile_height,
#  overlap, tile_batch_size, upscaler_name, scale_factor, noise_inverse, noise_inverse_steps,
#  noise_inverse_retouch, noise_inverse_renoise_strength, noise_inverse_renoise_kernel, control_tensor_cpu,
#  enable_bbox_control, draw_background, causal_layers] (the region controls keep their UI defaults).
# Latent tiles of 24x16 (w x h) with overlap 8 over a 256x208 image (latent 32x26): 2 columns x 3 rows,
# the last ones shifted to end at the edge, denoised in 2 batches of 3 tiles ("Tile count: 6, Batch size:
# 3" in the log); the middle block of a tile is a 3x2 grid, of the whole image it would be 4x3.25.
TILED_DIFFUSION_ARGS = [True, "MultiDiffusion", False, True, 1024, 1024, 24, 16, 8, 4, "None", 2.0,
                        False, 10, 1.0, 1.0, 64, False, False, False, False]


@BOTH_ORDERS
@needs("tiled_diffusion")
def test_tiled_diffusion(neighbourhood):
    """Tiled Diffusion (MultiDiffusion) replaces the sampler's inner model for the generation: each UNet
    call runs on a batch of overlapping latent tiles, whose results are blended back into the whole
    latent. The middle block then sees a tile's grid, never the image's: SAG steps aside with one log line
    naming the tile (before, it took the first tile's mask, stretched over the image), giving exactly the
    SAG-off image. (PAG and SEG work per tile: test_perturbed_neighbours.py.)"""
    webui = neighbourhood
    assert_load_order(webui, TILED_DIFFUSION_TITLE)
    payload = {**BASE, "width": 256, "height": 208}
    plain, _ = generate(webui, "txt2img", payload, OFF)
    tiled = with_script(payload, TILED_DIFFUSION_TITLE, TILED_DIFFUSION_ARGS)
    watch = LogWatch(webui)
    off, off_infos = check_works_or_steps_aside(webui, "txt2img", tiled)
    assert "the model ran on a 16x24 tile of the 26x32 latent" in watch.new_text()
    assert np.abs(off[0] - plain[0]).max() > 0, "Tiled Diffusion did not change the image"
    assert "Tiled Diffusion" in off_infos[0], off_infos[0]
    after, _ = generate(webui, "txt2img", payload, OFF)
    np.testing.assert_array_equal(after[0], plain[0], err_msg="the UNet was not restored after Tiled Diffusion")
    sag_after, _ = generate(webui, "txt2img", payload, ON)
    assert np.abs(sag_after[0] - plain[0]).max() > 0, "SAG stayed off after the Tiled Diffusion generation"
