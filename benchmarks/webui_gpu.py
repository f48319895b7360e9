"""Whole generations in a real webui on a CUDA GPU: SAG off, this extension, and the old extension, side by side.

Runs on the lent GPU machine through `tests/e2e/gpu/run.sh bench` (which sets up the webui there). Two webuis
are started with the e2e harness on the GPU in the webui's default half precision: one with this extension,
one with the old extension (ashen-sensored/sd_webui_SAG, a directory you give; never part of this
repository), each with the probe extension `benchmarks/webui_probe`, which records per generation the peak
CUDA memory, the allocator's cudaMalloc calls and the time of every model call by batch size. For each
configuration (20 steps Euler a):

* t_off_s, t_sag_s, t_old_s: the median wall time of a whole txt2img request (off and on alternate, after
  warm-up pairs: the machine's speed drifts over the first generations; the old extension's in its own webui,
  SD1.5 only: `null` for SDXL, where it fails);
* t_unet_b_ms: the median time of SAG's own model calls over the B uncond rows in the timed SAG generations
  (CUDA events around the k-diffusion denoiser's forward: the UNet with the webui's wrappers, as the pass
  runs it; read when each generation ends): exactly one pass over B rows at that shape, in the same
  generations;
* floor_ratio = 1 + steps * t_unet_b_ms / 1000 / t_off_s, the cost of exactly one extra pass per step;
* peak_off_mib, peak_sag_mib: the peak CUDA memory allocated during the generation.

    python benchmarks/webui_gpu.py --old-extension DIR --json benchmarks/results/webui-gpu-<commit>.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from e2e.harness.server import WebUI, WebUIError  # noqa: E402

PROBE = ROOT / "benchmarks" / "webui_probe"
STEPS = 20
CONFIGS = {  # name: (checkpoint, size, batch, warm-up pairs, repeats)
    "sd15-512-b1": ("sd1_wide", 512, 1, 3, 11),
    "sd15-512-b4": ("sd1_wide", 512, 4, 2, 7),
    "sdxl-1024-b1": ("sdxl_full", 1024, 1, 1, 5),
    "sdxl-2048-b1": ("sdxl_full", 2048, 1, 1, 2),
}
OURS = ("self-attention guidance", [True, 0.5, 2.0, 1.0], [False])
OLD = ("self attention guidance", [True, 0.5, 1.0], [False, 0.5, 1.0])  # its [enabled, scale, threshold]


def payload(size, batch, title, args):
    return {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": STEPS, "sampler_name": "Euler a",
            "width": size, "height": size, "batch_size": batch, "seed": 1, "cfg_scale": 5,
            "alwayson_scripts": {title: {"args": args}}}


def timed(webui, body):
    """(seconds, the probe's record) of one whole txt2img request."""
    start = time.perf_counter()
    webui.post("/sdapi/v1/txt2img", body)
    seconds = time.perf_counter() - start
    return seconds, webui.get("/sag-bench/last")


def measure(webui, extension, size, batch, warmup, repeats):
    """(off records, on records): `repeats` alternating off/on generations after `warmup` pairs."""
    title, on_args, off_args = extension
    off_body, on_body = payload(size, batch, title, off_args), payload(size, batch, title, on_args)
    for _ in range(warmup):  # kernels, allocator, and the machine's own warm-up
        timed(webui, off_body), timed(webui, on_body)
    off, on = [], []
    pairs = [(off_body, off), (on_body, on)]
    for index in range(repeats):
        for body, runs in pairs if index % 2 == 0 else pairs[::-1]:
            runs.append(timed(webui, body))
    return off, on


def call_ms(runs, batch):
    """The median over `runs` of each generation's median model-call time at `batch` rows."""
    return statistics.median(record["model_call_ms_by_batch"][str(batch)] for _, record in runs)


def mallocs(runs):
    """The median over `runs` of each generation's cudaMalloc calls."""
    return statistics.median(record["cuda_mallocs"] for _, record in runs)


def row(name, gpu, ours, old):
    (off, on), old_on = ours, old[1] if old else None
    batch = CONFIGS[name][2]
    t_off, t_sag = statistics.median(s for s, _ in off), statistics.median(s for s, _ in on)
    t_unet = call_ms(on, batch)
    paired = statistics.median(t_on / t_off for (t_off, _), (t_on, _) in zip(off, on))
    print(f"{name}: the host's CFG call over {2 * batch} rows: {call_ms(off, 2 * batch):.1f} ms with SAG off, "
          f"{call_ms(on, 2 * batch):.1f} ms with SAG on; SAG's pass over {batch}: {t_unet:.1f} ms; "
          f"median of the repeats' own on/off ratios {paired:.3f}; cudaMalloc calls per generation "
          f"{mallocs(off)} off, {mallocs(on)} on", flush=True)
    return {"config": name, "gpu": gpu, "steps": STEPS, "repeats": len(on), "t_off_s": round(t_off, 4),
            "t_sag_s": round(t_sag, 4), "t_old_s": round(statistics.median(s for s, _ in old_on), 4) if old_on else None,
            "t_unet_b_ms": round(t_unet, 3), "floor_ratio": round(1 + STEPS * t_unet / 1000 / t_off, 4),
            "peak_off_mib": round(max(r["peak_mib"] for _, r in off), 1),
            "peak_sag_mib": round(max(r["peak_mib"] for _, r in on), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-extension", type=Path, help="the old SAG extension's directory")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--attention", help="the webui's cross-attention optimization (default: its Automatic)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip().splitlines()[0]
    common = {"device": "cuda", "checkpoint": "sd1_wide", "layouts": ("sd1_wide", "sdxl_full"), "extra_extensions": [PROBE],
              "checkpoint_cache": os.environ.get("SD_WEBUI_TEST_CACHE"),
              "options": {"cross_attention_optimization": args.attention} if args.attention else None}
    ours_webui = WebUI(**common)
    old_webui = WebUI(**{**common, "with_extension": False,
                         "extra_extensions": [PROBE, args.old_extension]}) if args.old_extension else None
    rows = []
    try:
        for server in filter(None, (ours_webui, old_webui)):
            server.start()
        for name in args.configs:
            print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)  # beside run.sh's nvidia-smi dmon record
            checkpoint, size, batch, warmup, repeats = CONFIGS[name]
            ours_webui.use_checkpoint(checkpoint)
            ours = measure(ours_webui, OURS, size, batch, warmup, repeats)
            old = None
            if old_webui is not None and checkpoint == "sd1_wide":  # the old extension fails on SDXL
                try:
                    old = measure(old_webui, OLD, size, batch, warmup, repeats)
                except WebUIError as error:
                    print(f"old extension, {name}: {str(error)[:300]}", file=sys.stderr)
            rows.append(row(name, gpu, ours, old))
            print(json.dumps(rows[-1]), flush=True)
            if args.json:  # after every row: a run cut short keeps what it measured
                args.json.write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        for server in filter(None, (ours_webui, old_webui)):
            server.stop()
    print(f"{'config':<14}{'off s':>8}{'SAG s':>8}{'old s':>8}{'SAG/off':>9}{'floor':>8}{'target':>8}{'peak off':>10}{'peak SAG':>10}")
    for r in rows:
        old = f"{r['t_old_s']:.3f}" if r["t_old_s"] else "-"
        print(f"{r['config']:<14}{r['t_off_s']:>8.3f}{r['t_sag_s']:>8.3f}{old:>8}{r['t_sag_s'] / r['t_off_s']:>9.3f}"
              f"{r['floor_ratio']:>8.3f}{1.03 * r['floor_ratio']:>8.3f}{r['peak_off_mib']:>10.0f}{r['peak_sag_mib']:>10.0f}")


if __name__ == "__main__":
    main()
