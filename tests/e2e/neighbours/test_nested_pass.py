"""An ADetailer-style nested pass: our own test extension `tests/e2e/fixtures/nested_pass`, whose
`postprocess_image` runs an img2img `process_images` on the outer image as ADetailer does."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from e2e.neighbours.neighbourhood import AFTER_ONLY, gradient, with_script
from e2e.sag_api import BASE, OFF, ON, LogWatch, check_sag_case, encode, generate

NESTED_TITLE = "SAG test nested pass"


pytestmark = pytest.mark.e2e

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
