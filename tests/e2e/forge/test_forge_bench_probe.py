"""The GPU benchmark's probe extension (benchmarks/forge_probe) in a real Forge-family webui, on the CPU: the
work of the methods done without them (more copies of the cond chunk in the host's call, a plain call of the
batch function over the uncond rows after it) leaves the image as it was, for one generation only; the host
timers of the methods' parts time each step and change nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from harness.server import ForgeWebUI

from e2e.conftest import kept_data_dir
from e2e.sag_api import BASE, OFF, PAG, SEG, generate

pytestmark = pytest.mark.e2e
PROBE = Path(__file__).resolve().parents[3] / "benchmarks" / "forge_probe"


@pytest.fixture(scope="module")
def probe_webui(checkpoint_cache):
    with ForgeWebUI(checkpoint_cache=checkpoint_cache, extra_extensions=[PROBE],
                    data_dir=kept_data_dir("forge-probe")) as server:
        yield server


def generation(webui, requests=(), args=OFF):
    """(images, the probe's record) of one txt2img generation after the probe's `requests`."""
    for path in requests:
        webui.post(path, {})
    images, _ = generate(webui, "txt2img", BASE, args)
    return images, webui.get("/sag-bench/last")


@pytest.mark.parametrize("requests, call_rows, extra_call_rows", [
    (["/sag-bench/rows-1"], [[2, 3]], []), (["/sag-bench/extra-call"], [], [1]),
    (["/sag-bench/rows-2", "/sag-bench/extra-call"], [[2, 4]], [1])])
def test_the_methods_work_without_them_changes_nothing(probe_webui, requests, call_rows, extra_call_rows):
    """rows-N: the call of the cond and uncond chunks (2 rows) runs with N more copies of the cond chunk;
    extra-call: a call of the uncond chunk alone after it, which the rows leave alone (the wrapper sees only the
    step's own call); the image stays off's (in float32 the larger call rounds alike within a level of 255)."""
    plain, _ = generation(probe_webui)
    with_work, record = generation(probe_webui, requests)
    assert (record["call_rows"], record["extra_call_rows"]) == (call_rows, extra_call_rows)  # (as it came, as it ran)
    for image, other in zip(plain, with_work):
        assert np.abs(image.astype(int) - other.astype(int)).max() <= 1
    after = generation(probe_webui)[1]
    assert after["call_rows"] == after["extra_call_rows"] == []  # for the next generation only


def test_the_host_timers_time_each_step_of_pag_and_seg_and_change_nothing(probe_webui):
    both = {PAG: [True, 3.0], SEG: [{"scale": 3.0}]}
    plain, _ = generation(probe_webui, args=both)
    timed, record = generation(probe_webui, ["/sag-bench/host-times"], args=both)
    for image, other in zip(plain, timed):
        np.testing.assert_array_equal(image, other)
    steps = BASE["steps"]
    for part in ("pag/seg: begin_step", "pag/seg: their rows added", "pag/seg: end_step",
                 "pag/seg: apply", "host: denoiser step"):
        assert record["host_ms"][part]["calls"] == steps, part
        assert record["host_ms"][part]["median"] > 0
    assert "sag: end_step" not in record["host_ms"]  # SAG is off
