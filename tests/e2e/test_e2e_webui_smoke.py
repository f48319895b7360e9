"""The harness itself: the webui starts, lists scripts and generates real, seed-dependent images."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def decode(b64: str) -> np.ndarray:
    """A base64 PNG from the API as a float RGB array."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.float64)


def txt2img(webui, seed: int, size: int = 128) -> tuple[np.ndarray, dict]:
    result = webui.post("/sdapi/v1/txt2img", {
        "prompt": "a photo of a cat", "negative_prompt": "", "steps": 4, "sampler_name": "Euler a",
        "width": size, "height": size, "seed": seed, "cfg_scale": 5,
    })
    return decode(result["images"][0]), json.loads(result["info"])


def test_scripts_endpoint(webui):
    scripts = webui.get("/sdapi/v1/scripts")
    assert "x/y/z plot" in scripts["txt2img"]
    assert "x/y/z plot" in scripts["img2img"]


@pytest.mark.parametrize("checkpoint", ["sd1_tiny", "sdxl_tiny"])
def test_txt2img_images_depend_on_seed(webui, checkpoint):
    webui.use_checkpoint(checkpoint)
    first, info = txt2img(webui, seed=1)
    other, _ = txt2img(webui, seed=2)
    again, _ = txt2img(webui, seed=1)

    assert info["sd_model_name"] == checkpoint
    assert first.shape == (128, 128, 3)
    assert first.std() > 10, "uniform image: the UNet or VAE outputs (near) zeros"
    assert np.abs(first - other).mean() > 10, "different seeds gave the same image"
    np.testing.assert_array_equal(first, again)
