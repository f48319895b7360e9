"""Digests of SAG's, PAG's and SEG's images in a real webui, to show that a change of the code leaves every
image as it was (SAG's images must not change).

Run it from a checkout of the commit before the change and from one of the change (the harness links the
checkout it runs from into the webui), with the webui's environment as for the e2e tests, then compare:

    SD_WEBUI_PATH=... python tests/e2e/image_digests.py --webui a1111 --json before.json
    SD_FORGE_PATH=... python tests/e2e/image_digests.py --webui forge --json before.json
    python tests/e2e/image_digests.py --compare before.json after.json

Each case's entry is the SHA-256 of each image's pixels and the infotext keys the generation wrote.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
         "denoising_strength": 0.6}
FORGE_HIRES = {"hr_additional_modules": ["Use same choices"], "hr_cfg": 5}  # the Forge API's hires defaults fail


def cases(webui_kind: str) -> dict:
    """name: (endpoint, payload, the methods' arguments)."""
    from PIL import Image
    from e2e.sag_api import BASE, PAG, SEG, SIZE, TITLE as SAG, encode, inpaint_mask

    SAG_ON, PAG_ON, SEG_ON = {SAG: [True, 0.8, 2.0, 1.0]}, {PAG: [True, 3.0]}, {SEG: [{"scale": 3.0}]}
    hires = {**HIRES, **(FORGE_HIRES if webui_kind == "forge" else {})}
    img2img = {**BASE, "init_images": [encode(Image.new("RGB", (SIZE, SIZE), (120, 90, 60)))], "denoising_strength": 0.6}
    return {
        "sag": ("txt2img", BASE, SAG_ON),
        "sag_ddim": ("txt2img", {**BASE, "sampler_name": "DDIM"}, SAG_ON),
        "sag_batch_2": ("txt2img", {**BASE, "batch_size": 2}, SAG_ON),
        "sag_cfg_1": ("txt2img", {**BASE, "cfg_scale": 1}, SAG_ON),
        "sag_hires": ("txt2img", {**BASE, **hires},
                      {SAG: [{"enabled": True, "scale": 0.75, "hires": "own", "hires_scale": 0.5}]}),
        "sag_inpaint": ("img2img", {**img2img, "mask": inpaint_mask()}, SAG_ON),
        "sag_img2img": ("img2img", img2img, SAG_ON),
        "pag": ("txt2img", BASE, PAG_ON),
        "seg": ("txt2img", BASE, SEG_ON),
        "pag_seg_sigma_10": ("txt2img", BASE, {**PAG_ON, SEG: [{"scale": 3.0, "blur_sigma": 10}]}),
        "all_three": ("txt2img", BASE, {**SAG_ON, **PAG_ON, **SEG_ON}),
        "pag_cfg_1_rescale": ("txt2img", {**BASE, "cfg_scale": 1},
                              {PAG: [{"enabled": True, "scale": 3.0, "rescale": 0.5}]}),
        "pag_hires": ("txt2img", {**BASE, **hires},
                      {PAG: [{"enabled": True, "scale": 3.0, "hires": "own", "hires_scale": 1.0}]}),
        "seg_inpaint": ("img2img", {**img2img, "mask": inpaint_mask()}, SEG_ON),
    }


def digests(webui_kind: str) -> dict:
    """The webui's images and infotext keys, case by case (the harness needs numpy and Pillow: imported here, so that
    `--compare` runs with any Python)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from e2e.sag_api import decode, with_sag
    from harness.server import ForgeWebUI, WebUI

    server = WebUI if webui_kind == "a1111" else ForgeWebUI
    found = {}
    with server(checkpoint_cache=os.environ.get("SD_WEBUI_TEST_CACHE")) as webui:
        for name, (endpoint, payload, methods) in cases(webui_kind).items():
            result = webui.post(f"/sdapi/v1/{endpoint}", with_sag(payload, methods))
            keys = sorted(json.loads(result["info"]).get("extra_generation_params", {}))
            found[name] = [hashlib.sha256(decode(image).tobytes()).hexdigest() for image in result["images"]] + [keys]
            print(name, found[name][:-1], flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--webui", choices=("a1111", "forge"), help="AUTOMATIC1111's webui or a Forge-family one")
    parser.add_argument("--json", type=Path, help="write the digests here")
    parser.add_argument("--compare", type=Path, nargs=2, help="two digest files: the cases that differ")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        differ = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        print("\n".join(differ) or f"all {len(before)} cases the same")
        return 1 if differ else 0
    if not (args.webui and args.json):
        parser.error("--webui and --json, or --compare")
    args.json.write_text(json.dumps(digests(args.webui), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
