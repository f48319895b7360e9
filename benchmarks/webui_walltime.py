"""Whole-generation wall time with SAG on / SAG off in a real webui on the CPU (tiny SD1 checkpoint).

Runs this extension and, optionally, another SAG extension checked out by you (e.g. the old
ashen-sensored/sd_webui_SAG; it is never part of this repository), each in its own webui started by
the e2e harness, and prints the median request time with SAG off and on and their ratio.

    SD_WEBUI_PATH=/path/to/webui python benchmarks/webui_walltime.py [--old-extension DIR] [--runs 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.server import WebUI  # noqa: E402

PAYLOAD = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 20, "sampler_name": "Euler a",
           "width": 256, "height": 256, "seed": 1, "cfg_scale": 5}
OURS = ("self-attention guidance", [True, 0.5, 2.0, 1.0], [False])
OLD = ("self attention guidance", [True, 0.75, 1.0], [False, 0.75, 1.0])  # the old extension's [enabled, scale, threshold]


def median_seconds(webui, title, args, runs):
    payload = {**PAYLOAD, "alwayson_scripts": {title: {"args": args}}}
    webui.post("/sdapi/v1/txt2img", payload)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        webui.post("/sdapi/v1/txt2img", payload)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name, title, on_args, off_args, runs, **webui_args):
    with WebUI(**webui_args) as webui:
        off = median_seconds(webui, title, off_args, runs)
        on = median_seconds(webui, title, on_args, runs)
        off_again = median_seconds(webui, title, off_args, runs)
    off = min(off, off_again)
    return {"extension": name, "off_s": round(off, 3), "on_s": round(on, 3), "ratio": round(on / off, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-extension", type=Path, help="directory of another SAG extension to compare with")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--checkpoint-cache", type=Path)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    common = {"checkpoint_cache": args.checkpoint_cache}
    rows = [measure("sd-webui-sag", *OURS, args.runs, **common)]
    if args.old_extension:
        rows.append(measure(args.old_extension.name, *OLD, args.runs, with_extension=False,
                            extra_extensions=[args.old_extension], **common))
    print(f"{'extension':<20} {'SAG off s':>10} {'SAG on s':>10} {'on/off':>8}")
    for row in rows:
        print(f"{row['extension']:<20} {row['off_s']:>10.3f} {row['on_s']:>10.3f} {row['ratio']:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
