"""Hypertile, built into the webui, wraps the very attn1 SAG hooks."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.neighbours.neighbourhood import AFTER_ONLY, checkpoint
from e2e.sag_api import BASE, OFF, ON, check_sag_case, generate, options

pytestmark = pytest.mark.e2e

HYPERTILE = {"hypertile_enable_unet": True, "hypertile_max_tile_unet": 128, "hypertile_swap_size_unet": 1}


@AFTER_ONLY
@pytest.mark.parametrize("model,size", [("sd1_tiny", 256), ("sdxl_tiny", 512)])
def test_hypertile(neighbourhood, model, size):
    """Hypertile wraps the hooked attn1 itself; with 128-px tiles it splits the top transformer level
    (SD1 at 256 px: 32x32 latent tokens into 2x2 tiles; SDXL at 512 px: its first attention level).
    Its minimum tile keeps the middle block itself whole at any practical size."""
    webui = neighbourhood
    payload = {**BASE, "width": size, "height": size}
    with checkpoint(webui, model):
        plain, _ = generate(webui, "txt2img", payload, OFF)
        with options(webui, **HYPERTILE):
            assert webui.get("/sdapi/v1/options")["hypertile_enable_unet"] is True
            on, off = check_sag_case(webui, "txt2img", payload)
            _, infos = generate(webui, "txt2img", payload, ON)
        assert "Hypertile U-Net: True" in infos[0]
        assert np.abs(off[0] - plain[0]).max() > 0, "Hypertile did not tile anything (the off images are equal)"
        after, _ = generate(webui, "txt2img", payload, OFF)
    assert webui.get("/sdapi/v1/options")["hypertile_enable_unet"] is False
    np.testing.assert_array_equal(after[0], plain[0], err_msg="Hypertile switched off is not the plain image")
