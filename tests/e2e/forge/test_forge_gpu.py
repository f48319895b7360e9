"""The case contract in a real Forge-family webui on a CUDA GPU, in its default half precision, at SD1.5
512² (batch 2) and SDXL 1024², for SAG, PAG and SEG; ours beside the built-in SAG and PAG at the same seed,
and the adaptive-step samplers the host lists.

Runs only with ``SAG_E2E_DEVICE=cuda`` (``tests/e2e/gpu/run.sh forge-contract`` sets Forge up on a GPU
machine); the checkpoints are ``sd15`` and ``sdxl`` (every part at the real sizes, random weights).
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from e2e.perturbed_cases import HALF_PRECISION_METHODS, in_call_against_separate
from e2e.sag_api import BASE, OFF, ON, PAG, TITLE, LogWatch, check_sag_case
from e2e.forge.test_forge_host import (ADAPTIVE_SAMPLERS, find_builtin, images_of, ours_beside_the_builtin,
                                      with_scripts)
from harness.server import ForgeWebUI, WebUIError

pytestmark = pytest.mark.skipif(os.environ.get("SAG_E2E_DEVICE") != "cuda",
                                reason="GPU run: SAG_E2E_DEVICE=cuda (tests/e2e/gpu/run.sh forge-contract)")

CASES = {"sd15": {**BASE, "width": 512, "height": 512, "batch_size": 2, "steps": 12},
         "sdxl": {**BASE, "width": 1024, "height": 1024, "steps": 12}}


@pytest.fixture(scope="module", params=list(CASES))
def gpu_forge(request):
    with ForgeWebUI(device="cuda", checkpoint=request.param, layouts=(request.param,),
                    checkpoint_cache=os.environ.get("SD_WEBUI_TEST_CACHE")) as server:
        yield request.param, server


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_contract(gpu_forge, sampler):
    checkpoint, webui = gpu_forge
    case = {**CASES[checkpoint], "sampler_name": sampler}
    on, off = check_sag_case(webui, "txt2img", case, images_expected=case.get("batch_size", 1))
    for image in on + off:
        assert image.std() > 5, "a flat image (a NaN or an overflow that slipped through)"


@HALF_PRECISION_METHODS
def test_perturbed_contract(gpu_forge, methods):
    checkpoint, webui = gpu_forge
    case = CASES[checkpoint]
    on, off = check_sag_case(webui, "txt2img", case, images_expected=case.get("batch_size", 1), on_args=methods)
    for image in on + off:
        assert image.std() > 5, "a flat image (a NaN or an overflow that slipped through)"


def test_beside_the_builtin_pag(gpu_forge, record_property):
    """Ours and Forge's built-in PAG (middle block, scale 3) at the same seed, in fp16: the mean difference.
    Ours rides in the host's call, whose larger batch rounds the host's own rows differently in fp16 (the
    built-in's call of its own leaves them as off has them); the control is ours at a negligible scale."""
    checkpoint, webui = gpu_forge
    found = find_builtin(webui, "perturbedattentionguidance")
    if found is None:
        pytest.skip("this host has no built-in PAG")
    name, count = found
    case = CASES[checkpoint]
    off, _ = images_of(webui, with_scripts(case, {}))
    ours, _ = images_of(webui, with_scripts(case, {PAG: [True, 3.0]}))
    negligible, _ = images_of(webui, with_scripts(case, {PAG: [True, 1e-4]}))  # the rounding floor: see below
    theirs, _ = images_of(webui, with_scripts(case, {name: [True, 3.0, 0.0, 0.0, 1.0][:count]}))
    ours_vs_theirs, ours_vs_off, rounding = (float(np.mean([np.abs(a - b).mean() for a, b in zip(x, y)]))
                                             for x, y in ((ours, theirs), (ours, off), (negligible, off)))
    record_property("mean_abs_ours_vs_builtin_pag", ours_vs_theirs)
    record_property("mean_abs_ours_vs_off", ours_vs_off)
    record_property("mean_abs_batch_rounding", rounding)
    print(f"\n{checkpoint}: PAG mean |ours - built-in| = {ours_vs_theirs:.4f}, |ours - off| = {ours_vs_off:.4f}, "
          f"|ours at scale 1e-4 - off| = {rounding:.4f} (of 255)")
    assert ours_vs_off > 0 and ours_vs_theirs < max(0.1 * ours_vs_off, 2 * rounding)


def test_rows_in_the_webui_call_beside_a_call_of_their_own(gpu_forge, record_property):
    checkpoint, webui = gpu_forge
    in_call_against_separate(webui, CASES[checkpoint], record_property, checkpoint, half_precision=True)


def test_beside_the_builtin_sag(gpu_forge, record_property):
    checkpoint, webui = gpu_forge
    ours_vs_theirs, ours_vs_off, _ = ours_beside_the_builtin(webui, CASES[checkpoint], record_property,
                                                             label=f"{checkpoint}: ")
    assert ours_vs_theirs < 0.1 * ours_vs_off


def model_calls(log: str) -> int:
    """The model calls of a DPM adaptive generation: the highest count of its own progress bar in `log`
    (k-diffusion's `sample_dpm_adaptive` counts each call; the webui's "Total progress" bar is left out)."""
    counts = [int(n) for n in re.findall(r"(?<!: )(?<!\d)(\d+)it \[", log)]
    assert counts, "no progress bar of DPM adaptive in the log"
    return max(counts)


def last_error_line(log: str) -> str:
    """The last exception line of a traceback in `log` (``AssertionError: ...``, also inside an exception
    group's ``|`` frame), or ""."""
    lines = re.findall(r"^[\s|]*(\w*(?:Error|Exception)\b.*)$", log, flags=re.MULTILINE)
    return lines[-1].strip() if lines else ""


@pytest.mark.parametrize("sampler", ADAPTIVE_SAMPLERS)
def test_adaptive_sampler_finishes_with_sag(gpu_forge, sampler, record_property):
    """An adaptive sampler picks its own number of model calls; SAG's mask, a threshold that positions cross
    between two nearby latents, makes its error control take more. With SAG on it must still finish with a
    guided image wherever it finishes with SAG off, and ours do what the host's built-in SAG (the same
    guidance) does: DPM adaptive's model calls no more than 1.25 × the built-in's (reForge's ODE samplers
    show a percentage, not calls)."""
    checkpoint, webui = gpu_forge
    if checkpoint != "sd15":
        pytest.skip("the solver, not the model family, sets the count: SD1.5 only")
    if sampler not in [listed["name"] for listed in webui.get("/sdapi/v1/samplers")]:
        pytest.skip(f"this host has no {sampler}")
    case = {**BASE, "width": 512, "height": 512, "steps": 12, "sampler_name": sampler}
    variants = {"off": {TITLE: OFF}, "ours": {TITLE: ON}}
    found = find_builtin(webui, "selfattentionguidance")
    if found is not None:
        name, count = found
        variants["built-in"] = {name: ON[:count]}
    images, calls, failures = {}, {}, {}
    for label, scripts in variants.items():
        watch = LogWatch(webui)
        try:
            images[label] = images_of(webui, with_scripts(case, scripts))[0][0]
        except WebUIError as error:
            reason = last_error_line(watch.new_text()) or str(error)[:300]
            if label == "off":
                pytest.skip(f"{sampler} fails with SAG off (the host's): {reason}")
            failures[label] = reason
            continue
        log = watch.new_text()
        assert "Traceback" not in log and "[SAG]" not in log and images[label].std() > 5
        if sampler == "DPM adaptive":
            calls[label] = model_calls(log)
    differences = {label: float(np.abs(image - images["off"]).mean()) for label, image in images.items()}
    record_property("mean_abs_vs_off", differences)
    record_property("model_calls", calls)
    record_property("failures", failures)
    print(f"\n{sampler}: mean |image - off| (of 255) {differences}, model calls {calls or 'not shown'}, "
          f"failed: {failures or 'none'}")
    if "ours" in failures:
        assert "built-in" in failures, f"ours failed where the built-in SAG finished: {failures['ours']}"
        pytest.xfail(f"{sampler} does not finish with SAG, ours as the built-in: {failures['ours']}")
    assert differences["ours"] > 1
    if "built-in" in calls:
        assert calls["ours"] <= 1.25 * calls["built-in"]
