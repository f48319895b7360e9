"""Ultimate SD Upscale (Coyote-A/ultimate-upscale-for-automatic1111): tiles of odd sizes."""
from __future__ import annotations

import pytest

from e2e.neighbours.neighbourhood import BOTH_ORDERS, gradient, needs
from e2e.sag_api import BASE, check_sag_case


pytestmark = pytest.mark.e2e

USDU_TITLE = "ultimate sd upscale"
# [info, tile_width, tile_height, mask_blur, padding, seams_fix_width, seams_fix_denoise, seams_fix_padding,
#  upscaler_index, save_upscaled_image, redraw_mode, save_seams_fix_image, seams_fix_mask_blur,
#  seams_fix_type, target_size_type, custom_width, custom_height, custom_scale]
# Tiles of 80x48 px (odd multiples of 16, not of 64) over a 208x144 target: 3x3 tiles, the last ones
# cut short; each tile is redrawn as a 128x64 "only masked" inpainting (latent 16x8, middle grid 2x1).
USDU_ARGS = [None, 80, 48, 4, 16, 64, 0.35, 16, 1, False, 0, False, 4, 0, 0, 2048, 2048, 2]


@BOTH_ORDERS
@needs("usdu")
def test_ultimate_sd_upscale(neighbourhood):
    webui = neighbourhood
    payload = {**BASE, "width": 208, "height": 144, "denoising_strength": 0.5, "init_images": [gradient((112, 80))],
               "script_name": USDU_TITLE, "script_args": USDU_ARGS}
    on, _ = check_sag_case(webui, "img2img", payload)
    assert on[0].shape == (144, 208, 3)
