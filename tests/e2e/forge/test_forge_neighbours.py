"""SAG, PAG and SEG together beside the Forge hosts' integrated extensions that change the UNet, its weights,
its attention, its input or the CFG step: each case must keep the contract (all three change the image,
reproducibly, and leave the off image alone) with the neighbour on; a method that steps aside fails it with
its line. A neighbour the host lacks is skipped."""
from __future__ import annotations

import os

import pytest

from pathlib import Path

import numpy as np

from e2e.forge.test_forge_host import builtin, find_builtin, gradient, with_scripts
from e2e.neighbours.test_perturbed_neighbours import SOFT_INPAINTING_ARGS
from e2e.sag_api import BASE, OFF, PAG, SEG, TITLE, LogWatch, check_sag_case, encode, generate, inpaint_mask
from harness import checkpoints, lora
from harness.controlnet import sd1_controlnet_state_dict
from harness.server import ForgeWebUI, forge_from_env

ALL_THREE = {TITLE: [True, 0.8], PAG: [True, 3.0], SEG: [{"scale": 3.0}]}
NEIGHBOURS = {  # case: (script title's start, its leading arguments, the request's changes)
    "freeu": ("freeu integrated", [True, 1.3, 1.4, 0.9, 0.2], {}),
    "kohya_hrfix_factor_1.5": ("kohya hrfix integrated", [True, 3, 1.5, 0.0, 0.5], {"width": 256, "height": 256}),
    "dynamic_thresholding": ("dynamicthresholding", [True, 7.0], {"cfg_scale": 12}),
    "latent_modifier": ("latentmodifier integrated", [True, 2.0], {}),
    "stylealign": ("stylealign integrated", [True, 1.0], {"batch_size": 2}),
    "never_oom": ("never oom integrated", [True, False], {}),
    # reForge's own: APG as the CFG function, RescaleCFG, MaHiRo
    "apg": ('"apg\'s now your cfg"', [True, 0.5, 0.0, 15.0, 1.0, False, -1.0, -1.0], {}),
    "rescale_cfg": ("rescalecfg for reforge", [True, "Normal", 0.7], {}),
    "mahiro": ("mahiro cfg for reforge", [True], {}),
    # Forge Neo's: noise added to the text conditioning in `cfg_denoiser` for the first steps
    "seed_variance_enhancer": ("seedvarianceenhancer integrated", [True, 2, 0.6, 24, "No Decay", 1.0], {}),
}


@pytest.mark.parametrize("case", list(NEIGHBOURS))
def test_all_three_methods_beside(webui, case):
    prefix, args, changes = NEIGHBOURS[case]
    name, _ = builtin(webui, prefix)
    payload = with_scripts({**BASE, **changes}, {name: args})
    check_sag_case(webui, "txt2img", payload, images_expected=changes.get("batch_size", 1), on_args=ALL_THREE)


def multidiffusion(webui, tile_px: int, method: str = "MultiDiffusion"):
    """(endpoint, request) of a 256x128 image with MultiDiffusion Integrated on, in tiles of `tile_px`
    overlapping by 32, 4 to a call: txt2img, or img2img where the host shows it there only (Forge Neo)."""
    found = find_builtin(webui, "multidiffusion integrated")
    endpoint, payload = "txt2img", {**BASE, "width": 256, "height": 128}
    if found is None:
        found = builtin(webui, "multidiffusion integrated", img2img=True)
        endpoint, payload = "img2img", {**payload, "init_images": [encode(gradient())], "denoising_strength": 0.8}
    return endpoint, with_scripts(payload, {found[0]: [True, method, tile_px, tile_px, 32, 4]})


@pytest.mark.parametrize("method", ["MultiDiffusion", "Mixture of Diffusers"])
def test_all_three_methods_per_multidiffusion_tile(webui, method):
    """Tiles of 128 px (2 x 1 over the image), blended evenly or with gaussian weights: SAG runs inside them
    (sag_ext/hosts/tiles.py), PAG's and SEG's rows in a call of their own, which it tiles too."""
    endpoint, payload = multidiffusion(webui, 128, method)
    check_sag_case(webui, endpoint, payload, on_args=ALL_THREE)


def test_sag_in_one_multidiffusion_tile_is_sag_on_the_image(webui, record_property):
    """With one tile covering the image, SAG inside MultiDiffusion's tile is SAG on the image: the same image
    as without MultiDiffusion (the tiles' blend and the UNet calls' rows are otherwise the same)."""
    endpoint, one_tile = multidiffusion(webui, 256)
    alone = {key: value for key, value in one_tile.items() if key != "alwayson_scripts"}
    off, _ = generate(webui, endpoint, one_tile, OFF)
    watch = LogWatch(webui)
    tiled, infotexts = generate(webui, endpoint, one_tile, {TITLE: [True, 0.8]})
    whole, _ = generate(webui, endpoint, alone, {TITLE: [True, 0.8]})
    log = watch.new_text()
    difference, effect = (float(np.abs(tiled[0] - other[0]).max()) for other in (whole, off))
    record_property("max_abs_sag_one_tile_vs_whole", difference)
    print(f"\nSAG in one MultiDiffusion tile vs on the image: max |difference| = {difference:.4f} of 255 "
          f"(SAG's effect {effect:.2f})")
    assert "[SAG]" not in log and "Traceback" not in log, log[-4000:]
    assert "SAG Scale: 0.8" in infotexts[0] and effect > 1
    assert difference == 0


def test_torch_compile_makes_every_method_step_aside(webui):
    """Neo 6e1e0d5's Torch Compile Integrated swaps in a compiled diffusion model, which runs past the methods'
    hooks: each steps aside with one line, and the image is the one without them (but for rounding)."""
    name, _ = builtin(webui, "torch compile integrated")
    compiled = with_scripts(BASE, {name: ["dynamic"]})
    try:
        off, _ = generate(webui, "txt2img", compiled, OFF)
        watch = LogWatch(webui)
        on, infotexts = generate(webui, "txt2img", compiled, ALL_THREE)
        log = watch.new_text()
    finally:  # the host keeps a compiled model for the generations that follow
        generate(webui, "txt2img", with_scripts(BASE, {name: ["Disable"]}), OFF)
    # PAG's and SEG's rows rode in the first step's call before the methods could tell: that call's larger batch
    # rounds the host's rows a little differently, the rest is the image without them
    assert np.abs(on[0] - off[0]).mean() < 0.01
    assert [log.count(f"[{tag}]") for tag in ("SAG", "PAG", "SEG")] == [1, 1, 1], log[-3000:]
    assert log.count("compiled or replaced UNet") == 3 and not any(key in infotexts[0] for key in ("SAG", "PAG", "SEG"))


def test_all_three_methods_with_a_lora(webui):
    """A LoRA (random, rank 4) on the middle block's and the first output level's transformers, the layers the
    methods hook: the host patches the weights, the methods change the patched model's image."""
    lora.write_lora(webui.data_dir / "models" / "Lora", "sd15")
    webui.post("/sdapi/v1/refresh-loras", {})
    with_lora = {**BASE, "prompt": f"{BASE['prompt']} <lora:{lora.name('sd15')}:1>"}
    plain, _ = generate(webui, "txt2img", BASE, OFF)
    _, off = check_sag_case(webui, "txt2img", with_lora, on_args=ALL_THREE)
    assert np.abs(off[0] - plain[0]).max() > 0, "the LoRA did not change the image"


def test_all_three_methods_with_soft_inpainting(webui):
    """Soft inpainting blends the init image back in by the difference each step made. Forge's, reForge's and
    Neo's copy of it filters that difference over chunks of `len // n_jobs` pixels with `n_jobs = -1` on a
    machine of 6 cores or fewer: no chunk, an all-zero difference, and the init image returned whatever was
    generated (Classic keeps the original filter). There the test skips, unless the webui's PYTHONPATH holds
    eight_cores/ (SD_WEBUI_PYTHONPATH), whose joblib reports 8 cores, so the filter runs as on larger machines."""
    name, _ = builtin(webui, "soft inpainting", img2img=True)
    payload = with_scripts({**BASE, "init_images": [encode(gradient())], "mask": inpaint_mask(), "mask_blur": 4,
                            "denoising_strength": 0.8}, {name: SOFT_INPAINTING_ARGS})
    off, _ = generate(webui, "img2img", payload, OFF)
    if np.array_equal(off[0], np.asarray(gradient(), dtype=off[0].dtype)):
        pytest.skip(f"the host's soft inpainting returns the init image unchanged on this machine of {os.cpu_count()} "
                    "cores, with or without the methods (SD_WEBUI_PYTHONPATH=<this folder>/eight_cores runs it there)")
    check_sag_case(webui, "img2img", payload, on_args=ALL_THREE)


CONTROLNET = "sag_test_controlnet_sd15"


@pytest.fixture(scope="module")
def controlnet_webui(checkpoint_cache, tmp_path_factory):
    """A webui started with a random-weight SD1.5 ControlNet (harness.controlnet) in its models/ControlNet: the
    Forge hosts list control models once, at startup."""
    from safetensors.numpy import save_file

    webui_path, python = forge_from_env()
    cache = Path(checkpoint_cache or tmp_path_factory.mktemp("checkpoints"))
    sd15 = checkpoints.make_checkpoints(cache, python, webui_path, layouts=("sd15",))[0]
    data_dir = tmp_path_factory.mktemp("forge-controlnet")
    (data_dir / "models" / "ControlNet").mkdir(parents=True)
    save_file(sd1_controlnet_state_dict(sd15), str(data_dir / "models" / "ControlNet" / f"{CONTROLNET}.safetensors"))
    with ForgeWebUI(checkpoint_cache=cache, data_dir=data_dir) as server:
        if not find_builtin(server, "controlnet"):
            pytest.skip("this host has no built-in ControlNet")
        yield server


def test_all_three_methods_with_controlnet(controlnet_webui):
    """A ControlNet unit (no preprocessor, the random SD1.5 ControlNet): its outputs go to every row of the
    host's call, PAG's and SEG's rows included."""
    webui = controlnet_webui
    name, _ = builtin(webui, "controlnet")
    model = next(m for m in webui.get("/controlnet/model_list")["model_list"] if CONTROLNET in m)
    unit = {"enabled": True, "module": "None", "model": model, "weight": 1.0,
            "image": encode(gradient()), "resize_mode": "Crop and Resize", "control_mode": "Balanced",
            "save_detected_map": False}  # else some hosts add the control image to the output
    control = with_scripts(BASE, {name: [unit]})
    plain, _ = generate(webui, "txt2img", BASE, OFF)
    _, off = check_sag_case(webui, "txt2img", control, on_args=ALL_THREE)
    assert np.abs(off[0] - plain[0]).max() > 0, "the ControlNet did not change the image"


def test_multidiffusion_with_controlnet_makes_sag_step_aside(controlnet_webui):
    """ControlNet's outputs inside MultiDiffusion's tiles are made by its wrapper for its own rows, which SAG's
    carried rows are not: SAG steps aside with one line; PAG and SEG guide as without it."""
    webui = controlnet_webui
    name, _ = builtin(webui, "controlnet")
    model = next(m for m in webui.get("/controlnet/model_list")["model_list"] if CONTROLNET in m)
    unit = {"enabled": True, "module": "None", "model": model, "weight": 1.0, "image": encode(gradient()),
            "resize_mode": "Crop and Resize", "control_mode": "Balanced", "save_detected_map": False}
    endpoint, tiled = multidiffusion(webui, 128)
    tiled["alwayson_scripts"][name] = {"args": [unit]}
    both, _ = generate(webui, endpoint, tiled, {PAG: ALL_THREE[PAG], SEG: ALL_THREE[SEG]})
    watch = LogWatch(webui)
    all_three, infotexts = generate(webui, endpoint, tiled, ALL_THREE)
    log = watch.new_text()
    np.testing.assert_array_equal(all_three[0], both[0])
    assert log.count("[SAG]") == 1 and "ControlNet's outputs inside MultiDiffusion's tiles" in log, log[-4000:]
    assert "Traceback" not in log and "SAG Scale" not in infotexts[0] and "PAG Scale" in infotexts[0]
