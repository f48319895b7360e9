"""SAG next to its neighbours in a real webui: the built-in Hypertile, an ADetailer-style nested pass,
and third-party extensions that share a generation with SAG.

Every case follows `check_sag_case` (on differs from off, on is reproducible, off after on equals off
before, SAG's infotext keys exactly when on, no traceback and no `[SAG]` line in the log) with the
neighbour enabled.

* Hypertile (built into the webui) wraps, by replacing `forward` on the instance, the very middle-block
  `attn1` whose `__call__` SAG hooks. It is switched on with the `hypertile_enable_unet` option (set
  back explicitly afterwards), with tiles of 128 px so that tiles really split in the top levels.
* The nested pass is our own test-only extension, `tests/e2e/fixtures/nested_pass`: its
  `postprocess_image` runs an img2img `process_images` on the outer image as ADetailer does.
* Third-party neighbours are never part of this repository. Check them out at the commits pinned in
  `NEIGHBOURS` into `$SAG_NEIGHBOURS_DIR/<folder>` (e.g. `git clone <url> <folder> && git -C <folder>
  checkout <commit>`); a neighbour whose folder is missing is skipped with the reason. They are linked
  into the webui's `extensions/` under names that sort before ("0-<folder>") and after
  ("zz-<folder>") `sd-webui-sag`, since the webui loads extensions in folder-name order; each order
  gets its own webui process. A neighbour that disturbs the others (ControlNet, see `NEIGHBOURS`) gets
  webuis of its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.checkpoints import LAYOUTS
from harness.server import WebUI, WebUIError
from e2e.sag_api import (BASE, OFF, ON, SIZE, STEP_ASIDE, TITLE, LogWatch, check_sag_case,
                         check_works_or_steps_aside, encode, generate, options)

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parent / "fixtures"
NESTED_PASS = FIXTURES / "nested_pass"
NESTED_TITLE = "SAG test nested pass"


@dataclass(frozen=True)
class Neighbour:
    repo: str
    commit: str  # the version these tests were run against
    folder: str  # folder name under $SAG_NEIGHBOURS_DIR
    shared: bool = True  # loaded into the shared `neighbourhood` webuis; False: only into a webui of its own

    def path(self) -> Path | None:
        root = os.environ.get("SAG_NEIGHBOURS_DIR")
        if not root:
            return None
        path = Path(root) / self.folder
        return path if (path / "scripts").is_dir() else None

    def skip_reason(self) -> str:
        root = os.environ.get("SAG_NEIGHBOURS_DIR")
        if not root:
            return f"SAG_NEIGHBOURS_DIR is not set (needs {self.repo} @ {self.commit[:8]} in <dir>/{self.folder})"
        return f"{self.repo} is not checked out in {Path(root) / self.folder} (pin: {self.commit})"


NEIGHBOURS = {
    "kohya": Neighbour("wcde/sd-webui-kohya-hiresfix", "05af98743ef57838d6c83bfbe07a2920dd339a7c",
                       "sd-webui-kohya-hiresfix"),
    "dynthres": Neighbour("mcmonkeyprojects/sd-dynamic-thresholding", "73e4e04565aa86237d66764ac58ffae1f7e40e48",
                          "sd-dynamic-thresholding"),
    "freeu": Neighbour("ljleb/sd-webui-freeu", "75684923858445df87f7287192731e57d09def81", "sd-webui-freeu"),
    "usdu": Neighbour("Coyote-A/ultimate-upscale-for-automatic1111", "2322caa480535b1011a1f9c18126d85ea444f146",
                      "ultimate-upscale-for-automatic1111"),
    "incantations": Neighbour("v0xie/sd-webui-incantations", "980d63838a2b8c8659a01b242e55551870619d6a",
                              "sd-webui-incantations"),
    "tiled_diffusion": Neighbour("pkuliyi2015/multidiffusion-upscaler-for-automatic1111",
                                 "22798f6822bc9c8a905b51da8954ee313b973331", "multidiffusion-upscaler-for-automatic1111"),
    # Not shared: its scripts/api.py imports `modules.api.models` while scripts load, before any extension
    # (built-in ones too) has registered its settings, which freezes the response model of GET
    # /sdapi/v1/options without them (no `hypertile_*` keys any more).
    "controlnet": Neighbour("Mikubill/sd-webui-controlnet", "56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81",
                            "sd-webui-controlnet", shared=False),
}
ORDER_PREFIX = {"before": "0-", "after": "zz-"}  # "0-x" < "sd-webui-sag" < "zz-x"


def needs(key: str):
    """Skips a test (before its webui starts) when neighbour `key` is not checked out."""
    return pytest.mark.skipif(NEIGHBOURS[key].path() is None, reason=NEIGHBOURS[key].skip_reason())


def start_webui(order, neighbours, tmp_path_factory, checkpoint_cache, extensions=(), layouts=LAYOUTS):
    """A started webui (UI and API) with SAG, `extensions` and the checked-out `neighbours` linked to load
    before or after SAG (`order`); sd1_tiny loaded."""
    links = tmp_path_factory.mktemp(f"neighbours-{order}")
    extensions = list(extensions)
    for neighbour in neighbours:
        if neighbour.path() is not None:
            link = links / f"{ORDER_PREFIX[order]}{neighbour.folder}"
            link.symlink_to(neighbour.path().resolve(), target_is_directory=True)
            extensions.append(link)
    # with the UI: only then are built-in extensions' settings (Hypertile's) registered
    server = WebUI(checkpoint_cache=checkpoint_cache, extra_extensions=extensions, nowebui=False, layouts=layouts)
    server.start()
    server.order = order
    return server


@pytest.fixture(scope="module")
def neighbourhood(request, checkpoint_cache, tmp_path_factory):
    """A webui with SAG, the nested-pass fixture and every checked-out shared neighbour, loading before or
    after SAG (`request.param`)."""
    shared = [neighbour for neighbour in NEIGHBOURS.values() if neighbour.shared]
    server = start_webui(request.param, shared, tmp_path_factory, checkpoint_cache, [NESTED_PASS])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def controlnet_webui(request, checkpoint_cache, tmp_path_factory):
    """A webui with SAG and ControlNet only, loading before or after SAG (`request.param`)."""
    server = start_webui(request.param, [NEIGHBOURS["controlnet"]], tmp_path_factory, checkpoint_cache,
                         layouts=(*LAYOUTS, WIDE))
    try:
        yield server
    finally:
        server.stop()


BOTH_ORDERS = pytest.mark.parametrize("neighbourhood", ["before", "after"], indirect=True)
AFTER_ONLY = pytest.mark.parametrize("neighbourhood", ["after"], indirect=True)
CONTROLNET_ORDERS = pytest.mark.parametrize("controlnet_webui", ["before", "after"], indirect=True)


@contextlib.contextmanager
def checkpoint(webui, name):
    webui.use_checkpoint(name)
    try:
        yield
    finally:
        webui.use_checkpoint("sd1_tiny")


def with_script(payload: dict, title: str, args) -> dict:
    return {**payload, "alwayson_scripts": {**payload.get("alwayson_scripts", {}), title: {"args": args}}}


def script_order(webui) -> list[str]:
    return [script["name"] for script in webui.get("/sdapi/v1/script-info") if not script["is_img2img"]]


def assert_load_order(webui, title: str) -> None:
    names = script_order(webui)
    sag, other = names.index(TITLE), names.index(title.lower())
    assert (other < sag) == (webui.order == "before"), names


def check_alongside(webui, name: str, payload: dict, with_neighbour: dict, infotext_has=(), restores=True):
    """The case contract (`check_sag_case`) with the neighbour on (`with_neighbour`: `payload` plus the
    neighbour's arguments); the neighbour changes the SAG-off image; the SAG-on infotext carries the
    neighbour's `infotext_has` too; with `restores`, `payload` alone gives the same image before and
    after (the neighbour put the UNet back)."""
    plain, _ = generate(webui, "txt2img", payload, OFF)
    _, off = check_sag_case(webui, "txt2img", with_neighbour)
    assert np.abs(off[0] - plain[0]).max() > 0, f"{name} did not change the image"
    _, infos = generate(webui, "txt2img", with_neighbour, ON)
    assert all(text in infos[0] for text in infotext_has), infos[0]
    if restores:
        after, _ = generate(webui, "txt2img", payload, OFF)
        np.testing.assert_array_equal(after[0], plain[0], err_msg=f"the UNet was not restored after {name}")


def gradient(size=(SIZE, SIZE)):
    pixels = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return encode(Image.fromarray(pixels.astype(np.uint8)))


# ---- 1. Hypertile (built in) -----------------------------------------------------------------------

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


# ---- 2. ADetailer-style nested pass (our own test fixture) ----------------------------------------------

def nested_run(webui, outer, nested, payload=BASE):
    """(images, infotexts) of a txt2img with SAG `outer` whose images go through the nested img2img pass
    with SAG `nested`."""
    return generate(webui, "txt2img", with_script(payload, NESTED_TITLE, [True, json.dumps(nested)]), outer)


def reference_run(webui, outer, nested, payload=BASE):
    """The same as plain requests: per image, a txt2img (n_iter 1, the image's seed) with SAG `outer`,
    then that image through img2img (denoising 0.5, same seed) with SAG `nested`.

    One txt2img per image, right before its img2img, because the webui's img2img depends on the global
    torch RNG state the previous generation left: the VAE encoder's posterior is *sampled* with the
    unseeded global generator (ldm `DiagonalGaussianDistribution.sample`), and the webui's seeded noise
    re-seeds that generator. So the img2img of image k must follow a generation whose last seed was
    the seed of image k, as the nested pass does (it runs right after the outer batch k)."""
    images = []
    for index in range(payload.get("n_iter", 1)):
        first, _ = generate(webui, "txt2img", {**payload, "n_iter": 1, "seed": payload["seed"] + index}, outer)
        request = {key: payload[key] for key in ("prompt", "negative_prompt", "steps", "sampler_name", "width",
                                                 "height", "cfg_scale")}
        request.update(seed=payload["seed"] + index, denoising_strength=0.5,
                       init_images=[encode(Image.fromarray(first[0].astype(np.uint8)))])
        images += generate(webui, "img2img", request, nested)[0]
    return images


@AFTER_ONLY
def test_nested_pass_equals_two_plain_requests(neighbourhood):
    """Outer and nested SAG are independent: each of the four combinations gives exactly the image of a
    txt2img request followed by a separate img2img request with the same SAG settings."""
    webui = neighbourhood
    watch = LogWatch(webui)
    generate(webui, "img2img", {**BASE, "init_images": [gradient()], "denoising_strength": 0.5}, OFF)  # warm-up
    results = {}
    for outer_name, outer in (("on", ON), ("off", OFF)):
        for nested_name, nested in (("on", ON), ("off", OFF)):
            images, infos = nested_run(webui, outer, nested)
            reference = reference_run(webui, outer, nested)
            np.testing.assert_array_equal(images[0], reference[0], err_msg=f"outer {outer_name}, nested {nested_name}")
            assert all(("SAG Scale" in text) == (outer is ON) for text in infos), infos
            results[outer_name, nested_name] = images[0]
    again, _ = nested_run(webui, ON, OFF)
    log = watch.new_text()
    assert "Traceback" not in log and "[SAG]" not in log, log[-4000:]
    np.testing.assert_array_equal(again[0], results["on", "off"], err_msg="outer on / nested off is not reproducible")
    for outer_name in ("on", "off"):
        assert np.abs(results[outer_name, "on"] - results[outer_name, "off"]).max() > 0, \
            f"nested SAG did not change the image (outer {outer_name})"
    for nested_name in ("on", "off"):
        assert np.abs(results["on", nested_name] - results["off", nested_name]).max() > 0, \
            f"outer SAG did not change the image (nested {nested_name})"


@AFTER_ONLY
def test_nested_pass_between_outer_batches(neighbourhood):
    """With n_iter 2 the nested pass of the first image runs between the outer batches: the outer SAG
    session must be back for the second batch, and its hooks must not act in the nested pass."""
    webui = neighbourhood
    payload = {**BASE, "n_iter": 2}
    watch = LogWatch(webui)
    for outer, nested in ((ON, OFF), (OFF, ON)):
        images, _ = nested_run(webui, outer, nested, payload)
        reference = reference_run(webui, outer, nested, payload)
        assert len(images) == len(reference) == 2
        for index, (image, expected) in enumerate(zip(images, reference)):
            np.testing.assert_array_equal(image, expected, err_msg=f"image {index}, outer {outer}, nested {nested}")
    log = watch.new_text()
    assert "Traceback" not in log and "[SAG]" not in log, log[-4000:]


@AFTER_ONLY
def test_nested_pass_case_contract(neighbourhood):
    """check_sag_case on the outer SAG with the nested pass (SAG off inside) enabled."""
    check_sag_case(neighbourhood, "txt2img", with_script(BASE, NESTED_TITLE, [True, json.dumps(OFF)]))


# ---- 3. third-party neighbours --------------------------------------------------------------------------

KOHYA_TITLE = "Kohya Hires.fix"
# [enable, only_one_pass, d1, d2, s1, s2, scaler, downscale, upscale, smooth_scaling, early_out]:
# halve the UNet's top level for the first half of the steps, so the middle block runs at half size
# (a 2x2 grid instead of 4x4 at 256 px) and changes size between steps.
KOHYA_ARGS = [True, True, 3, 4, 0.5, 0.5, "bicubic", 0.5, 2.0, False, False]


@BOTH_ORDERS
@needs("kohya")
def test_kohya_hires_fix(neighbourhood):
    webui = neighbourhood
    assert_load_order(webui, KOHYA_TITLE)
    payload = {**BASE, "width": 256, "height": 256}
    check_alongside(webui, "Kohya hires fix", payload, with_script(payload, KOHYA_TITLE, KOHYA_ARGS),
                    infotext_has=["DSHF_s1"])


DYNTHRES_TITLE = "Dynamic Thresholding (CFG Scale Fix)"
# [enabled, mimic_scale, threshold_percentile, mimic_mode, mimic_scale_min, cfg_mode, cfg_scale_min,
#  sched_val, separate_feature_channels, scaling_startpoint, variability_measure, interpolate_phi]
DYNTHRES_ARGS = [True, 3.0, 99.0, "Constant", 0.0, "Constant", 0.0, 4.0, True, "MEAN", "AD", 1.0]


@BOTH_ORDERS
@needs("dynthres")
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_dynamic_thresholding(neighbourhood, sampler):
    webui = neighbourhood
    assert_load_order(webui, DYNTHRES_TITLE)
    payload = {**BASE, "cfg_scale": 12, "sampler_name": sampler}
    check_alongside(webui, "Dynamic thresholding", payload, with_script(payload, DYNTHRES_TITLE, DYNTHRES_ARGS),
                    infotext_has=["Dynamic thresholding enabled: True"], restores=False)


FREEU_TITLE = "FreeU"
FREEU_ARGS = [{"enable": True, "start_ratio": 0.0, "stop_ratio": 1.0, "transition_smoothness": 0.0, "version": "2",
               "stage_infos": [{"backbone_factor": 1.2, "skip_factor": 0.9}, {"backbone_factor": 1.4, "skip_factor": 0.2},
                               {"backbone_factor": 1.1, "skip_factor": 1.0}]}]


@BOTH_ORDERS
@needs("freeu")
def test_freeu(neighbourhood):
    """FreeU wraps the UNet's `th.cat` for the whole process and counts steps in cfg_after_cfg. Its
    stages are picked by channel width (1280/640/320), which the tiny test models (128/64/32) do not
    have, so here it is loaded and enabled but leaves the image alone: this checks coexistence only."""
    webui = neighbourhood
    assert_load_order(webui, FREEU_TITLE)
    freeu = with_script(BASE, FREEU_TITLE, FREEU_ARGS)
    check_sag_case(webui, "txt2img", freeu)
    _, infos = generate(webui, "txt2img", freeu, ON)
    assert "FreeU Stages" in infos[0]


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


CONTROLNET_TITLE = "controlnet"
T2I_ADAPTER_NAME = "sag_test_t2i_adapter_sd1_tiny"


def t2i_adapter_state_dict(seed: int = 0) -> dict:
    """Random weights of a T2I-Adapter for sd1_tiny, in the layout of the SD1.5 "full" adapters
    (nums_rb 2, 1x1 convolutions, identity skips, average-pool downsampling): four levels of 32, 64, 128
    and 128 channels at latent/1 .. latent/8, the widths of the sd1_tiny UNet's input levels.

    (ControlNet's loader builds SD1 ControlNets at SD1.5's fixed widths, whereas a T2I-Adapter's widths
    are read from its weights; the ControlNet tests use `sd1_wide` instead.)"""
    rng = np.random.default_rng(seed)

    def conv(out_c, in_c, k, gain=1.0):
        std = gain / np.sqrt(in_c * k * k)
        return {"weight": (rng.standard_normal((out_c, in_c, k, k)) * std).astype(np.float32),
                "bias": np.zeros(out_c, np.float32)}

    channels, nums_rb, cin = [32, 64, 128, 128], 2, 3 * 8 * 8  # RGB hint, pixel-unshuffled by 8
    layers = {"conv_in": conv(channels[0], cin, 3)}
    for level, width in enumerate(channels):
        for r in range(nums_rb):
            prefix = f"body.{level * nums_rb + r}"
            in_c = channels[level - 1] if level > 0 and r == 0 else width
            if in_c != width:
                layers[f"{prefix}.in_conv"] = conv(width, in_c, 1)
            layers[f"{prefix}.block1"] = conv(width, width, 3)
            layers[f"{prefix}.block2"] = conv(width, width, 1, gain=0.5)
    return {f"{name}.{kind}": tensor for name, params in layers.items() for kind, tensor in params.items()}


CONTROLNET_NAME = "sag_test_controlnet_sd15_wide"  # "sd15": ControlNet reads the SD version from the name
WIDE = "sd1_wide"  # the test checkpoint with SD1.5's UNet widths


def sd1_controlnet_state_dict(unet_checkpoint: Path, seed: int = 0) -> dict:
    """A random-weight SD1 ControlNet for `sd1_wide`, made the way ControlNets start their training: the
    encoder (time embedding, input blocks, middle block) copied from the UNet, plus a hint encoder for an
    RGB control image and one 1x1 output convolution per input block and for the middle block. The
    convolutions that ControlNet starts at zero are random here (gain 0.5), or the control would do
    nothing."""
    from safetensors import safe_open

    rng = np.random.default_rng(seed)

    def conv(name, out_c, in_c, k, gain=1.0):
        std = gain / np.sqrt(in_c * k * k)
        return {f"{name}.weight": (rng.standard_normal((out_c, in_c, k, k)) * std).astype(np.float32),
                f"{name}.bias": np.zeros(out_c, np.float32)}

    prefix = "model.diffusion_model."
    state = {}
    with safe_open(str(unet_checkpoint), framework="numpy") as unet:
        for key in unet.keys():
            if key.startswith(tuple(prefix + part for part in ("time_embed.", "input_blocks.", "middle_block."))):
                state[key[len(prefix):]] = unet.get_tensor(key)
        model_channels = unet.get_tensor(prefix + "input_blocks.0.0.weight").shape[0]
    hint_widths = [3, 16, 16, 32, 32, 96, 96, 256, model_channels]
    for index, (in_c, out_c) in enumerate(zip(hint_widths, hint_widths[1:])):
        state.update(conv(f"input_hint_block.{index * 2}", out_c, in_c, 3))
    widths = [model_channels]  # output width of each input block: SD1.5's 2 res blocks per level, mult 1-2-4-4
    for level, mult in enumerate((1, 2, 4, 4)):
        widths += [model_channels * mult] * (2 if level == 3 else 3)
    for index, width in enumerate(widths):
        state.update(conv(f"zero_convs.{index}.0", width, width, 1, gain=0.5))
    state.update(conv("middle_block_out.0", widths[-1], widths[-1], 1, gain=0.5))
    return state


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


INCANTATIONS_TITLE = "Incantations"
# Incantations is one always-on script whose arguments are those of its submodules, in order: Smoothed
# Energy Guidance [active, blur_sigma, start_step, end_step], Self-guided CFG [active, scale, rate_min,
# rate_max, rate_clamp, start_step, end_step, r], then PAG [active, scale, start_step, end_step,
# cfg_interval_enable, cfg_schedule, cfg_interval_low, cfg_interval_high, sanf]; the rest (T2I-Zero,
# Incantations itself) keep their UI defaults. PAG at scale 3 on every step.
PAG_ARGS = [False, 11.0, 0, 150,
            False, 1.0, 0.8, 3.0, 0.0, 0, 150, 4,
            True, 3.0, 0, 150, False, "Constant", 0.0, 100.0, False]


@BOTH_ORDERS
@needs("incantations")
def test_incantations_pag(neighbourhood):
    """Perturbed-Attention Guidance (Incantations): PAG adds a third, perturbed pass of the cond batch in
    cfg_denoiser and replaces, with forward hooks, the output of the very middle-block `attn1` SAG hooks
    (self-attention swapped for identity, i.e. its `to_v`) while that pass runs."""
    webui = neighbourhood
    assert_load_order(webui, INCANTATIONS_TITLE)
    check_alongside(webui, "PAG", BASE, with_script(BASE, INCANTATIONS_TITLE, PAG_ARGS),
                    infotext_has=["PAG Active: True", "PAG Scale: 3"])


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
    latent. SAG must either work (the case contract) or step aside with one log line, giving exactly
    the SAG-off image."""
    webui = neighbourhood
    assert_load_order(webui, TILED_DIFFUSION_TITLE)
    payload = {**BASE, "width": 256, "height": 208}
    plain, _ = generate(webui, "txt2img", payload, OFF)
    tiled = with_script(payload, TILED_DIFFUSION_TITLE, TILED_DIFFUSION_ARGS)
    off, off_infos = check_works_or_steps_aside(webui, "txt2img", tiled)
    assert np.abs(off[0] - plain[0]).max() > 0, "Tiled Diffusion did not change the image"
    assert "Tiled Diffusion" in off_infos[0], off_infos[0]
    after, _ = generate(webui, "txt2img", payload, OFF)
    np.testing.assert_array_equal(after[0], plain[0], err_msg="the UNet was not restored after Tiled Diffusion")
    sag_after, _ = generate(webui, "txt2img", payload, ON)
    assert np.abs(sag_after[0] - plain[0]).max() > 0, "SAG stayed off after the Tiled Diffusion generation"
