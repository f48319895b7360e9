"""A soak against a real webui: 100 mixed requests (toggling SAG, changing its parameters, switching
checkpoints, interrupting a run, bad arguments). The server stays up, the last SAG-off image equals the
first bit for bit, and resident memory stays within 10% of its size after warm-up."""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness.server import WebUIError
from e2e import sag_api
from e2e.sag_api import OFF, LogWatch, generate

pytestmark = pytest.mark.e2e
REQUESTS, WARM_UP = 100, 20
UNCHANGED = "[SAG] Self-Attention Guidance changed nothing in this generation:"
BASE = {**sag_api.BASE, "seed": 5}


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def interrupted_run(webui):
    """A long SAG generation, interrupted through the API while it samples; it must still answer."""
    result = {}

    def run():
        generate(webui, "txt2img", {**BASE, "steps": 40}, [True, 0.5])
        result["done"] = True

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.0)
    webui.post("/sdapi/v1/interrupt")
    worker.join(300)
    assert result.get("done"), "the interrupted request did not answer"


def test_soak(webui):
    webui.use_checkpoint("sd1_tiny")
    watch = LogWatch(webui)
    rng = random.Random(0)
    first_off, _ = generate(webui, "txt2img", BASE, OFF)
    kinds = {"off": 0, "on": 0, "bad": 0, "interrupt": 0, "switch": 0}
    unchanged = 0
    warm_rss = None
    for index in range(REQUESTS):
        if index == WARM_UP and webui.process:  # a running webui's memory is not ours to read
            warm_rss = resident_mib(webui.process.pid)
        roll = rng.random()
        if index % 25 == 12:
            webui.use_checkpoint("sdxl_tiny" if webui.checkpoint == "sd1_tiny" else "sd1_tiny")
            kind = "switch"
        elif index % 30 == 7:
            interrupted_run(webui)
            kind = "interrupt"
        elif roll < 0.15:
            with pytest.raises(WebUIError, match="HTTP 422"):
                generate(webui, "txt2img", BASE, [{"scale": rng.choice([99, float("inf"), "x"])}])
            kind = "bad"
        elif roll < 0.6:
            args = {"scale": round(rng.uniform(-1, 2), 2), "blur_sigma": round(rng.uniform(0, 4), 1),
                    "threshold": round(rng.uniform(0.5, 1.5), 2), "end": rng.choice([0.5, 1.0])}
            request_log = LogWatch(webui)
            images, infos = generate(webui, "txt2img", {**BASE, "seed": rng.randrange(100)}, [args])
            if "SAG Scale" in infos[0]:
                kind = "on"
            else:  # e.g. scale 0 or a threshold no position exceeds: no SAG keys and one line saying why
                text = request_log.new_text()
                assert "SAG" not in infos[0] and (text.count(UNCHANGED) == 1 or not webui.log_path), \
                    (args, infos[0], text[-3000:])  # a running webui's log is not ours to read
                kind = "unchanged"
        else:
            generate(webui, "txt2img", {**BASE, "seed": rng.randrange(100)}, OFF)
            kind = "off"
        if kind == "unchanged":
            unchanged += 1
        else:
            kinds[kind] += 1
    webui.use_checkpoint("sd1_tiny")
    last_off, _ = generate(webui, "txt2img", BASE, OFF)
    np.testing.assert_array_equal(last_off[0], first_off[0])
    assert all(kinds.values())
    if warm_rss is not None:
        final_rss = resident_mib(webui.process.pid)
        print(f"soak: {kinds}, unchanged {unchanged}, resident memory after warm-up {warm_rss:.0f} MiB, "
              f"at the end {final_rss:.0f} MiB")
        assert final_rss <= warm_rss * 1.10
    assert "Traceback" not in watch.new_text()
