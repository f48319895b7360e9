"""The webui experience through a real webui's API: script-info, X/Y/Z plot, png-info, 422s, preview, infotext."""
from __future__ import annotations

import json

import numpy as np
import pytest

from e2e.harness.server import WebUIError
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
    choices = script_info(webui, "x/y/z plot")["args"][0]["choices"]
    assert {"[SAG] Enabled", "[SAG] Scale", "[SAG] Blur sigma", "[SAG] Threshold", "[SAG] Start", "[SAG] End"} <= set(choices)
    args = [choices.index("[SAG] Scale"), "0, 0.4, 0.8", [], 0, "", [], 0, "", [], True, True, False, False, 0, 0, 0, 0, False]
    result = webui.post("/sdapi/v1/txt2img", {**BASE, "script_name": "x/y/z plot", "script_args": args})
    grid, *cells = [decode(image) for image in result["images"]]
    infotexts = json.loads(result["info"])["infotexts"][1:]
    assert len(cells) == 3 and grid.shape[1] > cells[0].shape[1]
    assert np.abs(cells[0] - cells[1]).max() > 0 and np.abs(cells[1] - cells[2]).max() > 0
    assert [("SAG Scale: 0.4" in text, "SAG Scale: 0.8" in text) for text in infotexts] == [(False, False), (True, False), (False, True)]


def test_png_info_returns_our_keys(webui):
    result = webui.post("/sdapi/v1/txt2img", with_sag(BASE, [True, 0.6, 1.5, 1.2]))
    parameters = webui.post("/sdapi/v1/png-info", {"image": result["images"][0]})["parameters"]
    assert parameters["SAG Enabled"] is True
    assert (float(parameters["SAG Scale"]), float(parameters["SAG Blur Sigma"]), float(parameters["SAG Threshold"])) == (0.6, 1.5, 1.2)


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
