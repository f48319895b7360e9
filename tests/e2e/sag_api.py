"""Helpers for the end-to-end tests: requests with SAG (or PAG, SEG), image decoding, the
on/off/reproducibility check."""
from __future__ import annotations

import base64
import contextlib
import copy
import io
import json

import numpy as np
import pytest
from PIL import Image

TITLE = "self-attention guidance"
ON = [True, 0.8, 2.0, 1.0]
OFF = [False]
SAG_KEYS = ("SAG Scale", "SAG Blur Sigma")
PAG, SEG = "perturbed-attention guidance", "smoothed energy guidance"
KEYS = {TITLE: SAG_KEYS, PAG: ("PAG Scale",), SEG: ("SEG Scale", "SEG Blur Sigma")}  # written whenever it acted
TAGS = {TITLE: "SAG", PAG: "PAG", SEG: "SEG"}  # of the console lines and infotext keys
SIZE = 128  # latent 16: a 2x2 middle grid on SD1, 4x4 on SDXL
BASE = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 4, "sampler_name": "Euler a",
        "width": SIZE, "height": SIZE, "seed": 11, "cfg_scale": 5}


@contextlib.contextmanager
def options(webui, **changed):
    """Sets webui options for a case and sets them back explicitly afterwards; skips the test where the webui
    has no such option (an older version)."""
    before = webui.get("/sdapi/v1/options")
    missing = sorted(set(changed) - set(before))
    if missing:
        pytest.skip(f"this webui has no option {', '.join(missing)}")
    webui.post("/sdapi/v1/options", changed)
    try:
        yield
    finally:
        webui.post("/sdapi/v1/options", {key: before[key] for key in changed})


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def inpaint_mask() -> str:
    """The inpainting mask of the cases (SIZE square): the middle half of each side repainted, encoded."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (SIZE // 4, SIZE // 4, 3 * SIZE // 4, 3 * SIZE // 4))
    return encode(mask)


def with_sag(payload: dict, args, title: str = TITLE) -> dict:
    """`payload` with the method `title`'s arguments `args`, or, for a dict `args`, each title's."""
    payload = copy.deepcopy(payload)
    for name, arguments in (args.items() if isinstance(args, dict) else [(title, args)]):
        payload.setdefault("alwayson_scripts", {})[name] = {"args": arguments}
    return payload


def generate(webui, endpoint: str, payload: dict, args, title: str = TITLE):
    """(images, infotexts) of one request with the method `title`'s arguments `args` (see with_sag)."""
    result = webui.post(f"/sdapi/v1/{endpoint}", with_sag(payload, args, title))
    info = json.loads(result["info"])
    return [decode(image) for image in result["images"]], info["infotexts"]


class LogWatch:
    """Remembers where the webui's log ended, to read what a case added to it ("" for a running webui)."""

    WHOLE = 1 << 40

    def __init__(self, webui):
        self.webui, self.start = webui, len(webui.log_tail(self.WHOLE))

    def new_text(self) -> str:
        return self.webui.log_tail(self.WHOLE)[self.start:]


def check_sag_case(webui, endpoint: str, payload: dict, images_expected: int = 1, must_change: bool = True, on_args=ON,
                   off_after_on: bool = True, title: str = TITLE):
    """The contract of every case: on differs from off, on is reproducible, off after on equals off before,
    the infotext carries the method's keys exactly when on, and the server log shows no traceback.
    `off_after_on=False` (a sweep, where a host's other cases check it) leaves out the off generation
    after on and the warm-up before. `title` names the method (SAG), or, with a dict `on_args`, the
    methods are its keys."""
    titles = list(on_args) if isinstance(on_args, dict) else [title]
    watch = LogWatch(webui)
    if off_after_on:
        generate(webui, endpoint, payload, OFF)  # warm-up: the webui's first img2img of a size differs slightly
    off_before, off_infos = generate(webui, endpoint, payload, OFF)
    on, on_infos = generate(webui, endpoint, payload, on_args, title)
    on_again, _ = generate(webui, endpoint, payload, on_args, title)
    off_after = generate(webui, endpoint, payload, OFF)[0] if off_after_on else []
    log = watch.new_text()

    assert "Traceback" not in log and not any(f"[{TAGS[name]}]" in log for name in titles), log[-4000:]
    assert len(on) == len(off_before) == images_expected
    for a, b in zip(off_before, off_after):
        np.testing.assert_array_equal(a, b, err_msg="SAG off after on differs from SAG off before")
    for a, b in zip(on, on_again):
        np.testing.assert_array_equal(a, b, err_msg="SAG on is not reproducible")
    if must_change:
        for index, (a, b) in enumerate(zip(on, off_before)):
            assert np.abs(a - b).max() > 0, f"SAG on did not change image {index}"
    assert all(key in text for text in on_infos for name in titles for key in KEYS[name]), on_infos[0]
    assert not any(f"{TAGS[name]} " in text for text in off_infos for name in titles), off_infos[0]
    return on, off_before


STEP_ASIDE = "[SAG] Self-Attention Guidance is off for this generation:"


def check_unchanged_with_one_line(webui, endpoint: str, payload: dict) -> str:
    """SAG on gives the SAG-off images, without SAG's infotext keys, no traceback and exactly one `[SAG]`
    line in the log; returns the log of the SAG-on generation (for the line's reason)."""
    off, _ = generate(webui, endpoint, payload, OFF)
    watch = LogWatch(webui)
    on, infotexts = generate(webui, endpoint, payload, ON)
    log = watch.new_text()
    assert len(on) == len(off)
    for a, b in zip(on, off):
        np.testing.assert_array_equal(a, b, err_msg="SAG changed an image it should have left alone")
    assert not any("SAG" in text for text in infotexts) and "Traceback" not in log, log[-4000:]
    assert log.count("[SAG]") == 1, log[-4000:]
    return log


def check_works_or_steps_aside(webui, endpoint: str, payload: dict):
    """With a neighbour that may change what SAG reads: either the full case contract holds, or SAG
    stepped aside with one log line, giving the SAG-off image without SAG's infotext keys.
    Returns (SAG-off images, their infotexts)."""
    watch = LogWatch(webui)
    generate(webui, endpoint, payload, OFF)  # warm-up
    off, off_infos = generate(webui, endpoint, payload, OFF)
    on, infos = generate(webui, endpoint, payload, ON)
    log = watch.new_text()
    assert "Traceback" not in log, log[-4000:]
    if STEP_ASIDE in log:
        assert log.count("[SAG]") == 1, log[-4000:]
        assert len(on) == len(off)
        for a, b in zip(on, off):
            np.testing.assert_array_equal(a, b, err_msg="SAG stepped aside but changed the image")
        assert not any("SAG Scale" in text for text in infos), "SAG stepped aside but its infotext claims it ran"
    else:
        check_sag_case(webui, endpoint, payload)
    return off, off_infos
