"""ControlNet (Mikubill/sd-webui-controlnet): a T2I-Adapter, reference-only, canny and inpaint_only units."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from harness.controlnet import sd1_controlnet_state_dict, t2i_adapter_state_dict
from harness.server import WebUIError
from e2e.neighbours.neighbourhood import WIDE, assert_load_order, check_alongside, checkpoint, gradient, needs
from e2e.perturbed_cases import BOTH
from e2e.sag_api import (BASE, OFF, ON, SIZE, STEP_ASIDE, TITLE, LogWatch, check_unchanged_with_one_line,
                         check_works_or_steps_aside, encode, generate)

pytestmark = pytest.mark.e2e

CONTROLNET_ORDERS = pytest.mark.parametrize("controlnet_webui", ["before", "after"], indirect=True)
CONTROLNET_TITLE = "controlnet"
T2I_ADAPTER_NAME = "sag_test_t2i_adapter_sd1_tiny"
CONTROLNET_NAME = "sag_test_controlnet_sd15_wide"  # "sd15": ControlNet reads the SD version from the name
CONTROL_MODELS = {T2I_ADAPTER_NAME: lambda webui: t2i_adapter_state_dict(),
                  CONTROLNET_NAME: lambda webui: sd1_controlnet_state_dict(
                      webui.data_dir / "models" / "Stable-diffusion" / f"{WIDE}.safetensors")}


def controlnet_model(webui, name: str = T2I_ADAPTER_NAME) -> str:
    """Writes the test control model `name` into the webui's models/ControlNet (once) and returns
    ControlNet's name for it ("<name> [<hash>]"), after making ControlNet list its models again."""
    from safetensors.numpy import save_file

    path = webui.data_dir / "models" / "ControlNet" / f"{name}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(CONTROL_MODELS[name](webui), str(path))
    # ControlNet adds its routes in an app_started callback, which may run after the webui's own API
    # and the model load (what WebUI.start waits for) are done
    deadline = time.monotonic() + 60
    while True:
        try:
            models = webui.get("/controlnet/model_list?update=true")["model_list"]
            break
        except WebUIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    matches = [model for model in models if model.split(" [")[0] == name]
    assert matches, models
    return matches[0]


def controlnet_unit(**unit) -> dict:
    base = {"enabled": True, "weight": 1.0, "resize_mode": "Crop and Resize", "processor_res": 512,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", "pixel_perfect": False,
            "save_detected_map": False}
    return {**base, **unit}


def with_controlnet(payload: dict, *units) -> dict:
    return {**payload, "alwayson_scripts": {**payload.get("alwayson_scripts", {}),
                                            CONTROLNET_TITLE: {"args": list(units)}}}


def stripes(size=(SIZE, SIZE)):
    """A hard-edged control image (vertical bars), as an edge map would be."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, ::16] = pixels[:, 1::16] = 255
    return encode(Image.fromarray(pixels))


@CONTROLNET_ORDERS
@needs("controlnet")
def test_controlnet_t2i_adapter(controlnet_webui):
    """A ControlNet unit with the "none" preprocessor and a random-weight T2I-Adapter (written by this
    test) sized for sd1_tiny: ControlNet replaces the UNet's forward for the generation and adds the
    adapter's features to the input blocks' outputs, so the middle block SAG hooks runs on changed
    activations."""
    webui = controlnet_webui
    assert_load_order(webui, CONTROLNET_TITLE)
    model = controlnet_model(webui)
    control = with_controlnet(BASE, controlnet_unit(module="none", model=model, image=stripes()))
    check_alongside(webui, "ControlNet (T2I-Adapter)", BASE, control, infotext_has=["ControlNet 0", T2I_ADAPTER_NAME])


@CONTROLNET_ORDERS
@needs("controlnet")
def test_controlnet_reference_only(controlnet_webui):
    """Reference-only (no model): ControlNet runs an extra UNet pass on the reference image that writes
    the self-attention inputs of every transformer block into a bank, and in the real passes feeds
    every block's `attn1` the bank as extra keys/values (replacing `BasicTransformerBlock._forward`).
    SAG must either work (the case contract) or step aside for the generation with one log line,
    giving exactly the SAG-off image."""
    webui = controlnet_webui
    assert_load_order(webui, CONTROLNET_TITLE)
    plain, _ = generate(webui, "txt2img", BASE, OFF)
    reference = with_controlnet(BASE, controlnet_unit(module="reference_only", model="None", image=gradient(),
                                                      threshold_a=0.5))
    off, _ = check_works_or_steps_aside(webui, "txt2img", reference)
    assert np.abs(off[0] - plain[0]).max() > 0, "reference-only did not change the image"
    after, _ = generate(webui, "txt2img", BASE, OFF)
    np.testing.assert_array_equal(after[0], plain[0], err_msg="the UNet was not restored after reference-only")
    sag_after, _ = generate(webui, "txt2img", BASE, ON)
    assert np.abs(sag_after[0] - plain[0]).max() > 0, "SAG stayed off after the reference-only generation"


@CONTROLNET_ORDERS
@needs("controlnet")
def test_controlnet_canny(controlnet_webui):
    """A plain ControlNet unit (canny preprocessor, random-weight SD1 ControlNet written by this test) on
    `sd1_wide`: the ControlNet's outputs are added to the UNet's skip connections and to the middle
    block's output, in SAG's degraded pass as in the CFG pass."""
    webui = controlnet_webui
    with checkpoint(webui, WIDE):
        model = controlnet_model(webui, CONTROLNET_NAME)
        control = with_controlnet(BASE, controlnet_unit(module="canny", model=model, image=gradient(),
                                                        threshold_a=50, threshold_b=100))
        check_alongside(webui, "ControlNet (canny)", BASE, control, infotext_has=["ControlNet 0", CONTROLNET_NAME])


@CONTROLNET_ORDERS
@needs("controlnet")
@pytest.mark.parametrize("unit", ["t2i_adapter", "canny"])
def test_controlnet_with_all_three_methods(controlnet_webui, unit):
    """The T2I-Adapter and the canny ControlNet units above with SAG, PAG and SEG on together: ControlNet's
    hook on the UNet's forward computes the control for every row of each call, PAG's and SEG's rows in
    the webui's call included."""
    webui = controlnet_webui
    with checkpoint(webui, WIDE if unit == "canny" else "sd1_tiny"):
        if unit == "canny":
            control = controlnet_unit(module="canny", model=controlnet_model(webui, CONTROLNET_NAME), image=gradient(),
                                      threshold_a=50, threshold_b=100)
        else:
            control = controlnet_unit(module="none", model=controlnet_model(webui), image=stripes())
        check_alongside(webui, f"ControlNet ({unit})", BASE, with_controlnet(BASE, control),
                        infotext_has=["ControlNet 0"], on_args={TITLE: [True, 0.8], **BOTH})


def square_mask(size=(SIZE, SIZE)):
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 255
    return encode(Image.fromarray(pixels))


@CONTROLNET_ORDERS
@needs("controlnet")
@pytest.mark.parametrize("endpoint,batch", [("txt2img", 1), ("img2img", 1), ("txt2img", 2)])
def test_controlnet_inpaint_only(controlnet_webui, endpoint, batch):
    """ControlNet's inpaint_only mode: the unit's image and mask go to the ControlNet (masked pixels set
    to -1), and after every UNet call ControlNet replaces the x0 prediction outside the mask by the
    encoded image, with latents it caches at the first call's batch size (the CFG batch); the decoded
    image is pasted back outside the mask. SAG's pass over the uncond rows then comes back at the cached
    size (one image: the two cached rows broadcast) or fails inside ControlNet (several images), and
    SAG steps aside with one line."""
    webui = controlnet_webui
    with checkpoint(webui, WIDE):
        model = controlnet_model(webui, CONTROLNET_NAME)
        plain, _ = generate(webui, "txt2img", BASE, OFF)
        unit = controlnet_unit(module="inpaint_only", model=model, image={"image": gradient(), "mask": square_mask()})
        payload = {**with_controlnet(BASE, unit), "batch_size": batch}
        if endpoint == "img2img":
            payload = {**payload, "init_images": [gradient()], "denoising_strength": 0.75}
        watch = LogWatch(webui)
        off, _ = check_works_or_steps_aside(webui, endpoint, payload)
        log = watch.new_text()
        assert STEP_ASIDE in log, "SAG did not step aside (update the README's table)"
        assert batch > 1 or "UnexpectedPassOutput" in log, log[-3000:]
        if endpoint == "txt2img":
            assert np.abs(off[0] - plain[0]).max() > 0, "inpaint_only did not change the image"


@CONTROLNET_ORDERS
@needs("controlnet")
@needs("tiled_diffusion")
def test_controlnet_in_tiled_diffusion_makes_sag_step_aside(controlnet_webui):
    """Tiled Diffusion cuts ControlNet's control per tile batch for the rows it tiles; SAG's rows per tile
    (tiled_diffusion.py) would not match them: SAG steps aside with one line, the image as without it."""
    from e2e.neighbours.test_tiled_diffusion import tiled

    webui = controlnet_webui
    payload = with_controlnet(tiled(), controlnet_unit(module="none", model=controlnet_model(webui),
                                                       image=stripes((256, 208))))
    log = check_unchanged_with_one_line(webui, "txt2img", payload)
    assert "ControlNet inside Tiled Diffusion's tiles" in log, log[-3000:]
