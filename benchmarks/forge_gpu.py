"""Whole generations in a real Forge webui on a CUDA GPU: SAG off, this extension, and Forge's built-in SAG.

Runs on a GPU machine through `tests/e2e/gpu/run.sh forge-bench` (which sets up Forge there from
`pack.py --forge`). One Forge webui per checkpoint is started with the e2e harness on the GPU in Forge's
default half precision, with this extension and the probe extension `benchmarks/forge_probe` (peak CUDA
memory per generation; a plain pass per step on request). For each configuration (20 steps Euler a, CFG 5,
SAG scale 0.5, blur sigma 2, threshold 1 for both SAGs), after warm-up rounds, each repeat runs SAG off,
ours, the built-in SAG and the plain-pass variant once, in an order that rotates from repeat to repeat:

* t_off_s, t_sag_s, t_builtin_s: the median wall time of a whole txt2img request;
* floor_ratio = 1 + steps * plain_pass_ms / 1000 / t_off_s, the cost of exactly one extra pass per step,
  where plain_pass_ms is the median (over the steps, then the generations) of one isolated model call over
  the B uncond rows through Forge's own batch function, in a SAG-off generation;
* peak_off_mib, peak_sag_mib, peak_builtin_mib: the peak CUDA memory allocated during the generation;
* sag_off_paired, builtin_off_paired: the median over the repeats of each repeat's own ratio to its SAG-off
  generation (the variants of a repeat run back to back), which drifts of the machine's speed between
  repeats do not move; where a generation is bound by the host's Python (SDXL at 1024² on an H200), such
  drifts reach tens of percent.

`--profile DIR` writes, per configuration, the profiler's operator tables of one generation off and one
with ours on into DIR.

    python benchmarks/forge_gpu.py --json benchmarks/results/forge-gpu-<commit>.json [--configs ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.webui_gpu import ROOT, STEPS, measure, write  # noqa: E402
from harness.server import ForgeWebUI  # noqa: E402

PROBE = ROOT / "benchmarks" / "forge_probe"
CONFIGS = {  # name: (checkpoint, size, batch, warm-up rounds, repeats)
    "sd15-512-b1": ("sd15", 512, 1, 2, 20),
    "sdxl-1024-b1": ("sdxl", 1024, 1, 2, 10),
    "sdxl-2048-b1": ("sdxl", 2048, 1, 1, 2),
}
OURS = "self-attention guidance"
BUILTIN = "selfattentionguidance integrated (sd 1.x, sd 2.x, sdxl)"
SAG_ARGS = [True, 0.5, 2.0, 1.0]


def payload(size, batch, scripts):
    return {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": STEPS, "sampler_name": "Euler a",
            "width": size, "height": size, "batch_size": batch, "seed": 1, "cfg_scale": 5,
            "alwayson_scripts": {title: {"args": args} for title, args in scripts.items()}}


def row(name, gpu, host, runs):
    """The row of one configuration from `measure`'s runs; the built-in SAG's cells are None where the host
    has none (Forge Neo, Forge Classic)."""
    labels = [label for label in ("off", "on", "builtin") if label in runs]
    seconds = {label: statistics.median(s for s, _ in runs[label]) for label in labels}
    plain_ms = statistics.median(record["plain_pass_ms"] for _, record in runs["plain"])
    peak = {label: round(max(record["peak_mib"] for _, record in runs[label]), 1) for label in labels}
    paired = {label: round(statistics.median(t / t_off for (t, _), (t_off, _) in zip(runs[label], runs["off"])), 4)
              for label in labels[1:]}
    builtin_seconds = seconds.get("builtin")
    return {"host": host, "config": name, "gpu": gpu, "steps": STEPS, "repeats": len(runs["on"]),
            "t_off_s": round(seconds["off"], 4), "t_sag_s": round(seconds["on"], 4),
            "t_builtin_s": None if builtin_seconds is None else round(builtin_seconds, 4),
            "plain_pass_ms": round(plain_ms, 3),
            "floor_ratio": round(1 + STEPS * plain_ms / 1000 / seconds["off"], 4),
            "peak_off_mib": peak["off"], "peak_sag_mib": peak["on"], "peak_builtin_mib": peak.get("builtin"),
            "sag_off_paired": paired["on"], "builtin_off_paired": paired.get("builtin")}


def profile(webui, name, bodies, out: Path):
    """Per body (after one plain warm-up): the host milliseconds of a step and of SAG's parts in one
    generation, then the profiler tables of another, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for label, body in bodies.items():
        webui.post("/sdapi/v1/txt2img", body)
        webui.post("/sag-bench/host-times", {})
        webui.post("/sdapi/v1/txt2img", body)
        host_ms = webui.get("/sag-bench/last")["host_ms"]
        print(f"{name} {label} host ms: {json.dumps(host_ms)}", flush=True)
        webui.post("/sag-bench/profile", {})
        webui.post("/sdapi/v1/txt2img", body)
        record = webui.get("/sag-bench/last")
        (out / f"{name}-{label}.txt").write_text(json.dumps(host_ms, indent=1) + "\n" + record["profile_by_host"]
                                                 + "\n" + record["profile_by_cuda"])


def print_table(rows):
    print(f"{'config':<14}{'off s':>8}{'SAG s':>8}{'built-in s':>11}{'SAG/off':>9}{'paired':>8}{'built-in/off':>13}"
          f"{'floor':>8}{'target':>8}{'peak off':>10}{'peak SAG':>10}{'peak built-in':>14}")

    def cell(value, width, digits=3):
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    for r in rows:
        print(f"{r['config']:<14}{r['t_off_s']:>8.3f}{r['t_sag_s']:>8.3f}{cell(r['t_builtin_s'], 11)}"
              f"{r['t_sag_s'] / r['t_off_s']:>9.3f}{r['sag_off_paired']:>8.3f}{cell(r['builtin_off_paired'], 13)}"
              f"{r['floor_ratio']:>8.3f}{1.03 * r['floor_ratio']:>8.3f}"
              f"{r['peak_off_mib']:>10.0f}{r['peak_sag_mib']:>10.0f}{cell(r['peak_builtin_mib'], 14, 0)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--host", default="Forge dfdcbab6", help="the host's name and commit, for the rows")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--profile", type=Path, help="write profiler tables of one generation off and one on here")
    parser.add_argument("--skip-timing", action="store_true", help="only --profile")
    args = parser.parse_args()
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip().splitlines()[0]
    rows = []
    for checkpoint in dict.fromkeys(CONFIGS[name][0] for name in args.configs):
        with ForgeWebUI(device="cuda", checkpoint=checkpoint, layouts=(checkpoint,), extra_extensions=[PROBE],
                        checkpoint_cache=os.environ.get("SD_WEBUI_TEST_CACHE")) as webui:
            has_builtin = any(script["name"] == BUILTIN for script in webui.get("/sdapi/v1/script-info"))
            for name in [name for name in args.configs if CONFIGS[name][0] == checkpoint]:
                print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)
                _, size, batch, warmup, repeats = CONFIGS[name]
                off = payload(size, batch, {OURS: [False]})
                variants = [("off", webui, off, None), ("on", webui, payload(size, batch, {OURS: SAG_ARGS}), None),
                            ("builtin", webui, payload(size, batch, {BUILTIN: SAG_ARGS}), None),
                            ("plain", webui, off, "/sag-bench/plain-pass")]
                if not has_builtin:
                    variants = [variant for variant in variants if variant[0] != "builtin"]
                if args.profile:
                    profile(webui, name, {label: body for label, _, body, _ in variants[:2]}, args.profile)
                if args.skip_timing:
                    continue
                rows.append(row(name, gpu, args.host, measure(variants, warmup, repeats)))
                print(json.dumps(rows[-1]), flush=True)
                write(args.json, rows)
    print_table(rows)


if __name__ == "__main__":
    main()
