"""The benchmark's probe extension (benchmarks/webui_probe) in the real webui, on the CPU: its timeline of
each step, its plain pass (an extra model call, which must not change the image), the work of the methods
without them (more rows in the CFG call, a plain call after it) and its profile, each for one generation
only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from e2e.conftest import kept_data_dir
from harness.server import WebUI
from e2e.sag_api import BASE, OFF, ON, generate

pytestmark = pytest.mark.e2e
PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "webui_probe"
PAYLOAD = {**BASE, "batch_size": 2}  # the CFG call holds 4 rows, SAG's pass 2


@pytest.fixture(scope="module")
def probe_webui(checkpoint_cache):
    with WebUI(checkpoint_cache=checkpoint_cache, extra_extensions=[PROBE], data_dir=kept_data_dir("probe")) as server:
        yield server


def generation(webui, args, probe_request=None):
    """(images, the probe's record) of one txt2img generation."""
    if probe_request:
        webui.post(probe_request, {})
    images, _ = generate(webui, "txt2img", PAYLOAD, args)
    return images, webui.get("/sag-bench/last")


def test_the_timeline_has_each_steps_model_calls(probe_webui):
    _, off = generation(probe_webui, OFF)
    _, on = generation(probe_webui, ON)
    assert off["steps_timed"] == on["steps_timed"] == PAYLOAD["steps"] - 1  # whole steps: up to the last
    assert list(off["step_segments_ms"]) == ["step>call4", "call4>end4", "end4>done", "done>step"]
    assert list(on["step_segments_ms"]) == ["step>call4", "call4>end4", "end4>call2", "call2>end2", "end2>done",
                                            "done>step"]
    assert all(span["host"] >= 0 and span["gpu"] >= 0 for span in on["step_segments_ms"].values())
    assert off["peak_mib"] is None  # no CUDA here


def test_the_plain_pass_runs_once_and_changes_nothing(probe_webui):
    plain, before = generation(probe_webui, OFF)
    with_pass, with_call = generation(probe_webui, OFF, "/sag-bench/plain-pass")
    again, after = generation(probe_webui, OFF)
    assert "call2>end2" in with_call["step_segments_ms"] and "call2>end2" not in before["step_segments_ms"]
    assert "call2>end2" not in after["step_segments_ms"]  # for the next generation only
    for image, other in zip(plain + again, with_pass + with_pass):
        np.testing.assert_array_equal(image, other)


@pytest.mark.parametrize("requests, calls", [(["/sag-bench/rows-1"], ["call6>end6"]),
                                              (["/sag-bench/rows-2"], ["call8>end8"]),
                                              (["/sag-bench/extra-call"], ["call4>end4", "call2>end2"]),
                                              (["/sag-bench/rows-2", "/sag-bench/extra-call"], ["call8>end8", "call2>end2"])])
def test_the_methods_work_without_them_changes_nothing(probe_webui, requests, calls):
    """rows-N: the CFG call carries N more copies of the cond rows (the floor of PAG's and SEG's rows in it);
    extra-call: one plain call over the uncond rows after it (SAG's pass); the image stays off's (in float32
    the larger call rounds alike within a level of 255)."""
    plain, _ = generation(probe_webui, OFF)
    for path in requests[1:]:
        probe_webui.post(path, {})
    with_work, record = generation(probe_webui, OFF, requests[0])
    segments = [name for name in record["step_segments_ms"] if name.startswith("call")]
    assert segments == calls
    for image, other in zip(plain, with_work):
        assert np.abs(image.astype(int) - other.astype(int)).max() <= 1
    _, after = generation(probe_webui, OFF)
    assert [name for name in after["step_segments_ms"] if name.startswith("call")] == ["call4>end4"]


def test_the_rows_ride_in_an_sdxl_call(probe_webui):
    """SDXL's conditioning is a dict of tensors (the webui's DictWithShape): the rows take each of them."""
    probe_webui.use_checkpoint("sdxl_tiny")
    try:
        plain, _ = generation(probe_webui, OFF)
        probe_webui.post("/sag-bench/extra-call", {})
        with_work, record = generation(probe_webui, OFF, "/sag-bench/rows-2")
    finally:
        probe_webui.use_checkpoint("sd1_tiny")
    assert [name for name in record["step_segments_ms"] if name.startswith("call")] == ["call8>end8", "call2>end2"]
    for image, other in zip(plain, with_work):
        assert np.abs(image.astype(int) - other.astype(int)).max() <= 1


def test_a_profiled_generation_holds_the_operator_tables(probe_webui):
    _, record = generation(probe_webui, OFF, "/sag-bench/profile")
    assert "aten::" in record["profile_by_host"]
    _, next_record = generation(probe_webui, OFF)
    assert "profile_by_host" not in next_record
