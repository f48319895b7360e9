"""The neighbours SAG is tested beside, the webuis that load them, and the checks every neighbour's case uses."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.checkpoints import LAYOUTS
from harness.server import WebUI
from e2e.sag_api import OFF, ON, SIZE, TITLE, check_sag_case, encode, generate

FIXTURES = Path(__file__).parents[1] / "fixtures"
NESTED_PASS = FIXTURES / "nested_pass"
WIDE = "sd1_wide"  # the test checkpoint with SD1.5's UNet widths (ControlNet's)


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
    # PAG and SEG for reForge and Forge (tests/e2e/forge): compared with ours, each in a webui of its own
    # (its scripts' titles are ours)
    "perturbed_attention": Neighbour("pamparamm/sd-perturbed-attention", "904319bff623b185f15047e231a446d615ee48c6",
                                     "sd-perturbed-attention", shared=False),
}
ORDER_PREFIX = {"before": "0-", "after": "zz-"}  # "0-x" < "sd-webui-sag" < "zz-x"


def needs(key: str):
    """Skips a test (before its webui starts) when neighbour `key` is not checked out."""
    return pytest.mark.skipif(NEIGHBOURS[key].path() is None, reason=NEIGHBOURS[key].skip_reason())


def neighbour_webui(order, neighbours, tmp_path_factory, checkpoint_cache, extensions=(), layouts=LAYOUTS):
    """A webui (UI and API), to start, with SAG, `extensions` and the checked-out `neighbours` linked to load
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
    server.order = order
    return server


BOTH_ORDERS = pytest.mark.parametrize("neighbourhood", ["before", "after"], indirect=True)
AFTER_ONLY = pytest.mark.parametrize("neighbourhood", ["after"], indirect=True)


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


def check_alongside(webui, name: str, payload: dict, with_neighbour: dict, infotext_has=(), restores=True, on_args=ON):
    """The case contract (`check_sag_case`, SAG's or `on_args`' methods) with the neighbour on (`with_neighbour`:
    `payload` plus the neighbour's arguments); the neighbour changes the off image; the on infotext carries
    the neighbour's `infotext_has` too; with `restores`, `payload` alone gives the same image before and
    after (the neighbour put the UNet back)."""
    plain, _ = generate(webui, "txt2img", payload, OFF)
    _, off = check_sag_case(webui, "txt2img", with_neighbour, on_args=on_args)
    assert np.abs(off[0] - plain[0]).max() > 0, f"{name} did not change the image"
    _, infos = generate(webui, "txt2img", with_neighbour, on_args)
    assert all(text in infos[0] for text in infotext_has), infos[0]
    if restores:
        after, _ = generate(webui, "txt2img", payload, OFF)
        np.testing.assert_array_equal(after[0], plain[0], err_msg=f"the UNet was not restored after {name}")


def gradient(size=(SIZE, SIZE)):
    pixels = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return encode(Image.fromarray(pixels.astype(np.uint8)))


