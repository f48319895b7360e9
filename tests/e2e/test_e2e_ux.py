"""The webui experience through a real webui's API: script-info, X/Y/Z plot, png-info, 422s, preview, infotext."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from harness.server import WebUI, WebUIError
from e2e.sag_api import BASE, OFF, ON, TITLE, LogWatch, decode, generate, with_sag

pytestmark = pytest.mark.e2e


def script_info(webui, name, img2img=False):
    return next(info for info in webui.get("/sdapi/v1/script-info") if info["name"] == name and info["is_img2img"] == img2img)


@pytest.mark.parametrize("img2img", [False, True])
def test_script_info_lists_the_arguments(webui, img2img):
    info = script_info(webui, TITLE, img2img)
    assert info["is_alwayson"]
    labels = [arg["label"] for arg in info["args"]]
    assert labels == ["Self-Attention Guidance", "SAG scale", "SAG blur sigma", "SAG threshold", "SAG start", "SAG end",
                      "SAG hires pass", "SAG hires scale"]
    scale = info["args"][1]
    assert (scale["minimum"], scale["maximum"], scale["value"]) == (-2, 5, 0.5)


def test_xyz_plot_with_a_sag_scale_axis(webui):
    webui.use_checkpoint("sd1_tiny")
    xyz_args = script_info(webui, "x/y/z plot")["args"]
    choices = xyz_args[0]["choices"]
    assert {"[SAG] Enabled", "[SAG] Scale", "[SAG] Blur sigma", "[SAG] Threshold", "[SAG] Start", "[SAG] End"} <= set(choices)
    args = [choices.index("[SAG] Scale"), "0, 0.4, 0.8", [], 0, "", [], 0, "", [], True, True, False, False, 0, 0, 0, 0, False]
    args += [arg["value"] for arg in xyz_args[len(args):]]  # arguments later webuis added (the dev branch's draw_grid)
    result = webui.post("/sdapi/v1/txt2img", {**BASE, "script_name": "x/y/z plot", "script_args": args})
    grid, *cells = [decode(image) for image in result["images"]]
    infotexts = json.loads(result["info"])["infotexts"][1:]
    assert len(cells) == 3 and grid.shape[1] > cells[0].shape[1]
    assert np.abs(cells[0] - cells[1]).max() > 0 and np.abs(cells[1] - cells[2]).max() > 0
    assert [("SAG Scale: 0.4" in text, "SAG Scale: 0.8" in text) for text in infotexts] == [(False, False), (True, False), (False, True)]


def test_png_info_returns_our_keys(webui):
    # threshold 0.9 masks part of sd1_tiny's 2x2 grid at 128 px (1.2 masks nothing: then SAG writes no keys)
    result = webui.post("/sdapi/v1/txt2img", with_sag(BASE, [True, 0.6, 1.5, 0.9]))
    parameters = webui.post("/sdapi/v1/png-info", {"image": result["images"][0]})["parameters"]
    assert parameters["SAG Enabled"] is True
    assert (float(parameters["SAG Scale"]), float(parameters["SAG Blur Sigma"]), float(parameters["SAG Threshold"])) == (0.6, 1.5, 0.9)


@pytest.mark.parametrize("args,message", [([{"scale": 99}], "scale must be within -2.0..5.0, got 99"),
                                          ([{"sacle": 1}], "unknown key"), ([{"enabled": "yes"}], "enabled must be true or false"),
                                          ([True, float("nan")], "scale must be finite")])
def test_bad_arguments_get_422_naming_the_field(webui, args, message):
    watch = LogWatch(webui)
    with pytest.raises(WebUIError, match="HTTP 422") as error:
        webui.post("/sdapi/v1/txt2img", with_sag(BASE, args))
    assert message in str(error.value)
    log = watch.new_text()
    if webui.log_path:  # a webui this harness started: its log shows the 422 and no sampling
        assert "Traceback" not in log and "POST /sdapi/v1/txt2img HTTP/1.1\" 422" in log
        assert "100%" not in log


def test_preview_only_when_asked(webui):
    images, _ = generate(webui, "txt2img", {**BASE, "batch_size": 2}, [{"scale": 0.5}])
    assert len(images) == 2
    images, infotexts = generate(webui, "txt2img", {**BASE, "batch_size": 2}, [{"scale": 0.5, "preview": True}])
    assert len(images) == 4 and images[2].shape == images[0].shape
    assert np.abs(images[2] - images[0]).max() > 0  # the red mask over the image


def test_infotext_request_field_sets_sag(ui_webui):
    """The API's `infotext` field maps onto script arguments through the UI's paste fields (so: a UI server)."""
    infotext = "a photo of a cat\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 5, Seed: 11, SAG Scale: 0.7, SAG Blur Sigma: 1.5"
    result = ui_webui.post("/sdapi/v1/txt2img", {**BASE, "infotext": infotext})
    assert "SAG Scale: 0.7, SAG Blur Sigma: 1.5" in json.loads(result["info"])["infotexts"][0]
    on, _ = generate(ui_webui, "txt2img", BASE, [True, 0.7, 1.5])
    np.testing.assert_array_equal(decode(result["images"][0]), on[0])


def test_dict_and_positional_arguments_give_the_same_image(webui):
    by_dict, _ = generate(webui, "txt2img", BASE, [{"scale": 0.8, "blur_sigma": 2.0}])
    by_list, _ = generate(webui, "txt2img", BASE, ON)
    np.testing.assert_array_equal(by_dict[0], by_list[0])
    off, _ = generate(webui, "txt2img", BASE, OFF)
    assert np.abs(off[0] - by_dict[0]).max() > 0


def panel_value(server, elem_id):
    """The value the UI's component `elem_id` starts with, from Gradio's GET /config."""
    components = [c for c in server.get("/config")["components"] if c.get("props", {}).get("elem_id") == elem_id]
    assert len(components) == 1, f"{len(components)} components with elem_id {elem_id!r}"
    return components[0]["props"]["value"]


def test_settings_default_reaches_the_panel_over_a_pinned_ui_config(checkpoint_cache, tmp_path):
    """ui-config.json pins the scale the panel showed at the first start (0.5); Settings says 0.7: the panel
    and the API's script-info show 0.7."""
    if not os.environ.get("SD_WEBUI_PATH"):
        pytest.skip("starts a webui of its own: needs SD_WEBUI_PATH")
    pinned = {f"customscript/sag.py/{tab}/SAG scale/value": 0.5 for tab in ("txt2img", "img2img")}
    (tmp_path / "ui-config.json").write_text(json.dumps(pinned, indent=4))
    with WebUI(checkpoint_cache=checkpoint_cache, nowebui=False, data_dir=tmp_path,
               options={"sag_default_scale": 0.7}) as server:
        for tab in ("txt2img", "img2img"):
            assert panel_value(server, f"script_{tab}_selfattention_guidance_scale") == 0.7, tab
            assert panel_value(server, f"script_{tab}_selfattention_guidance_blur_sigma") == 2.0, tab
            assert script_info(server, TITLE, tab == "img2img")["args"][1]["value"] == 0.7, tab
        # the key the webui writes for our controls (start is saved as usual): the pinned one above is real
        saved = json.loads((tmp_path / "ui-config.json").read_text())
        assert saved["customscript/sag.py/txt2img/SAG start/value"] == 0.0


INFOTEXT_HEAD = "a photo of a cat\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 5, Seed: 11, "


@pytest.mark.parametrize("keys,args", [
    ("sag_enabled: True, sag_scale: 0.8, sag_blur_sigma: 1.0, sag_threshold: 1.0", [True, 0.8, 1.0, 1.0]),  # Forge
    ("SAG Guidance Scale: 0.75, SAG Mask Threshold: 1.0", [True, 0.75, 2.0, 1.0]),  # the old extension
], ids=["forge", "old extension"])
def test_infotext_request_field_reads_other_key_sets(ui_webui, keys, args):
    """The API's `infotext` field with Forge's or the old extension's keys gives the image of those values
    as arguments (the old extension had no blur sigma: ours, 2.0)."""
    result = ui_webui.post("/sdapi/v1/txt2img", {**BASE, "infotext": INFOTEXT_HEAD + keys})
    infotext = json.loads(result["info"])["infotexts"][0]
    assert f"SAG Scale: {args[1]}, SAG Blur Sigma: {args[2]}" in infotext
    on, _ = generate(ui_webui, "txt2img", BASE, args)
    np.testing.assert_array_equal(decode(result["images"][0]), on[0])
    off, _ = generate(ui_webui, "txt2img", BASE, OFF)
    assert np.abs(off[0] - on[0]).max() > 0


HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}


def test_hires_keys_only_with_a_hires_pass(webui):
    args = [True, 0.5, 2.0, 1.0, 0.0, 1.0, "own", 0.3]
    _, infotexts = generate(webui, "txt2img", BASE, args)
    assert "SAG Scale: 0.5" in infotexts[0] and "SAG Hires" not in infotexts[0]
    _, infotexts = generate(webui, "txt2img", {**BASE, **HIRES}, args)
    assert "SAG Hires: own" in infotexts[0] and "SAG Hires Scale: 0.3" in infotexts[0]


@pytest.mark.parametrize("size,args", [(64, ON), (128, ON[:3] + [1.2])], ids=["1x1 grid", "threshold above all"])
def test_a_generation_sag_changes_nothing_says_so(webui, size, args):
    """SD1 at 64x64: a 1x1 middle-block grid, whose one position never exceeds the threshold (no pass runs);
    sd1_tiny at 128 px: a 2x2 grid none of whose positions reaches 1.2 (known on the device after the pass)."""
    webui.use_checkpoint("sd1_tiny")
    payload = {**BASE, "width": size, "height": size}
    off, _ = generate(webui, "txt2img", payload, OFF)
    watch = LogWatch(webui)
    on, infotexts = generate(webui, "txt2img", payload, args)
    np.testing.assert_array_equal(on[0], off[0])
    assert "SAG" not in infotexts[0]
    if webui.log_path:  # a webui this harness started
        log = watch.new_text()
        assert "Traceback" not in log, log[-4000:]
        assert log.count("[SAG]") == 1, log[-4000:]
        assert log.count("[SAG] Self-Attention Guidance changed nothing in this generation:") == 1, log[-4000:]
