"""Tiled Diffusion / MultiDiffusion (pkuliyi2015/multidiffusion-upscaler-for-automatic1111)."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.neighbours.neighbourhood import AFTER_ONLY, BOTH_ORDERS, assert_load_order, checkpoint, needs, with_script
from e2e.sag_api import BASE, OFF, ON, LogWatch, check_sag_case, generate


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
PAYLOAD = {**BASE, "width": 256, "height": 208}


def tiled(method="MultiDiffusion", tile=(24, 16), payload=PAYLOAD):
    args = list(TILED_DIFFUSION_ARGS)
    args[1], (args[6], args[7]) = method, tile
    return with_script(payload, TILED_DIFFUSION_TITLE, args)


@BOTH_ORDERS
@needs("tiled_diffusion")
@pytest.mark.parametrize("method,sampler,batch", [("MultiDiffusion", "Euler a", 1), ("Mixture of Diffusers", "Euler a", 1),
                                                  ("MultiDiffusion", "DDIM", 1), ("MultiDiffusion", "Euler a", 2)])
def test_sag_guides_every_tile(neighbourhood, method, sampler, batch):
    """Tiled Diffusion runs each UNet call on batches of overlapping latent tiles and blends their outputs
    back into the whole latent; the middle block sees a tile's grid, never the image's. SAG guides each
    tile as an image of its own and Tiled Diffusion blends the corrections with the tiles (the case
    contract: on differs from off, reproducible, off after on as before, no console line); the UNet is
    restored afterwards."""
    webui = neighbourhood
    assert_load_order(webui, TILED_DIFFUSION_TITLE)
    payload = {**PAYLOAD, "sampler_name": sampler, "batch_size": batch}
    plain, _ = generate(webui, "txt2img", payload, OFF)
    on, off = check_sag_case(webui, "txt2img", tiled(method, payload=payload), images_expected=batch)
    assert np.abs(off[0] - plain[0]).max() > 0, "Tiled Diffusion did not change the image"
    after, _ = generate(webui, "txt2img", payload, OFF)
    np.testing.assert_array_equal(after[0], plain[0], err_msg="the UNet was not restored after Tiled Diffusion")


@BOTH_ORDERS
@needs("tiled_diffusion")
def test_sag_in_one_tile_over_the_image_is_sag_without_tiles(neighbourhood):
    """With one tile as large as the latent, Tiled Diffusion's image is the webui's own, and SAG inside it
    (made inside the UNet call in the model's eps) gives SAG's image without it."""
    webui = neighbourhood
    whole = tiled(tile=(32, 26))
    watch = LogWatch(webui)
    assert np.array_equal(generate(webui, "txt2img", whole, OFF)[0][0], generate(webui, "txt2img", PAYLOAD, OFF)[0][0])
    inside, infos = generate(webui, "txt2img", whole, ON)
    plain, _ = generate(webui, "txt2img", PAYLOAD, ON)
    assert "[SAG]" not in watch.new_text() and "SAG Scale" in infos[0]
    difference = np.abs(inside[0] - plain[0])
    effect = np.abs(plain[0] - generate(webui, "txt2img", PAYLOAD, OFF)[0][0])
    print(f"SAG in one tile against SAG without Tiled Diffusion: mean {difference.mean():.4f}, max {difference.max()} "
          f"of 255 (SAG's effect: mean {effect.mean():.2f}, max {effect.max()})")
    assert effect.mean() > 1 and difference.max() <= 1 and difference.mean() < 0.01 * effect.mean()


@AFTER_ONLY
@needs("tiled_diffusion")
def test_sag_guides_every_tile_of_sdxl(neighbourhood):
    """SDXL's dict conditionings and its vector rows, in tiles of 32 latent pixels over a 64x48 latent."""
    with checkpoint(neighbourhood, "sdxl_tiny"):
        check_sag_case(neighbourhood, "txt2img", tiled(tile=(32, 32), payload={**BASE, "width": 512, "height": 384}))
