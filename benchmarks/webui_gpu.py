"""Whole generations in a real webui on a CUDA GPU: SAG off, this extension, and the old extension, side by side.

Runs on a GPU machine through `tests/e2e/gpu/run.sh bench` (which sets up the webui there). Two webuis
are started with the e2e harness on the GPU in the webui's default half precision: one with this extension,
one with the old extension (ashen-sensored/sd_webui_SAG, a directory you give; never part of this
repository), each with the probe extension `benchmarks/webui_probe`, which records per generation the peak
CUDA memory, the allocator's cudaMalloc calls and where each sampling step's time goes. For each
configuration (20 steps Euler a):

* t_off_s, t_sag_s, t_old_s, t_old_off_s: the median wall time of a whole txt2img request: after warm-up
  rounds (the machine's speed drifts over the first generations), each repeat runs SAG off, ours, the old
  extension on and off (in its own webui, whose SAG-off time is its own baseline; SD1.5 only, `null` for
  SDXL, where it fails) and the plain-pass variant once, in an order that rotates from repeat to repeat;
* t_unet_b_ms: one model call over the B uncond rows at that shape, as SAG's pass makes it (the k-diffusion
  denoiser's forward: the UNet with the webui's wrappers), but without SAG: the plain-pass variant is a
  SAG-off generation in which the probe makes that call after each step's CFG call, isolated (the GPU
  waited for before and after it), so its wall time is its whole cost whichever of the host and the GPU
  sets its pace; the median over a generation's steps, then over the generations;
* floor_ratio = 1 + steps * t_unet_b_ms / 1000 / t_off_s, the cost of exactly one extra pass per step;
* t_off_plus_pass_s: the plain-pass variant's median wall time (SAG off plus one isolated plain pass per
  step: the floor in whole generations, beside the formula's);
* peak_off_mib, peak_sag_mib: the peak CUDA memory allocated during the generation.

It also prints, per configuration, SAG's own pass by both clocks (in the SAG generations the host issues it
while the GPU still finishes the CFG call), the CFG call off and on, the median of each repeat's own on/off
ratio and the ratio of the fastest generations (a busy host runs some generations about 1.4x slower than
others, so a median can land in either speed), and where a step's time goes in each variant
(the probe's step segments: host and GPU milliseconds between its marks). `--records` writes every
generation's record, from which `--from-records` recomputes the rows here without a GPU; `--profile` adds
one more generation off and one on under torch's profiler to them.

    python benchmarks/webui_gpu.py --old-extension DIR --json benchmarks/results/webui-gpu-<commit>.json
    python benchmarks/webui_gpu.py --from-records RECORDS.json [MORE.json ...] --json ROWS.json

All four configurations take over 10 minutes on an H200: where one command may run 10 minutes at most, run
the SD1.5 and the SDXL ones as two commands (`--configs`) and join their records with `--from-records`.
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
sys.path.insert(0, str(ROOT))
from harness.server import WebUI, WebUIError  # noqa: E402

PROBE = ROOT / "benchmarks" / "webui_probe"
STEPS = 20
CONFIGS = {  # name: (checkpoint, size, batch, warm-up rounds, repeats)
    "sd15-512-b1": ("sd1_wide", 512, 1, 3, 15),
    "sd15-512-b4": ("sd1_wide", 512, 4, 2, 9),
    "sdxl-1024-b1": ("sdxl_full", 1024, 1, 1, 5),
    "sdxl-2048-b1": ("sdxl_full", 2048, 1, 1, 2),
}
OURS_ON = ("self-attention guidance", [True, 0.5, 2.0, 1.0])
OURS_OFF = ("self-attention guidance", [False])
OLD_ON = ("self attention guidance", [True, 0.5, 1.0])  # its [enabled, scale, threshold]
OLD_OFF = ("self attention guidance", [False, 0.5, 1.0])


def payload(size, batch, title, args):
    return {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": STEPS, "sampler_name": "Euler a",
            "width": size, "height": size, "batch_size": batch, "seed": 1, "cfg_scale": 5,
            "alwayson_scripts": {title: {"args": args}}}


def timed(webui, body, probe_requests=()):
    """(seconds, the probe's record) of one whole txt2img request, after `probe_requests` (probe paths to
    POST first, e.g. "/sag-bench/plain-pass")."""
    for path in probe_requests:
        webui.post(path, {})
    start = time.perf_counter()
    webui.post("/sdapi/v1/txt2img", body)
    seconds = time.perf_counter() - start
    return seconds, webui.get("/sag-bench/last")


def measure(variants, warmup, repeats):
    """{label: [(seconds, record)]} of `repeats` rounds over `variants` [(label, webui, body, probe
    requests)], after `warmup` rounds; each round starts one variant later than the one before.
    A variant whose webui fails (the old extension on a model it cannot handle) is reported and dropped."""
    runs = {label: [] for label, *_ in variants}
    for index in range(warmup + repeats):
        for label, webui, body, probe_requests in variants[index % len(variants):] + variants[:index % len(variants)]:
            if label not in runs:
                continue
            try:
                result = timed(webui, body, probe_requests)
            except WebUIError as error:
                print(f"{label}: {str(error)[:300]}; dropped", file=sys.stderr)
                del runs[label]
                continue
            if index >= warmup:
                runs[label].append(result)
    return runs


def mallocs(runs):
    """The median over `runs` of each generation's cudaMalloc calls."""
    return statistics.median(record["cuda_mallocs"] for _, record in runs)


def segments(runs):
    """"a>b": (host ms, GPU ms), the medians over `runs` of each generation's step segment."""
    names = dict.fromkeys(name for _, record in runs for name in record["step_segments_ms"])
    return {name: tuple(statistics.median(record["step_segments_ms"][name][clock] for _, record in runs
                                          if name in record["step_segments_ms"]) for clock in ("host", "gpu"))
            for name in names}


def call_ms(runs, batch, clock="gpu"):
    """The median over `runs` of each generation's model call over `batch` rows (the median of its calls)
    by `clock` ("gpu": CUDA events, "host": perf_counter)."""
    host, gpu = segments(runs)[f"call{batch}>end{batch}"]
    return gpu if clock == "gpu" else host


def print_steps(name, runs):
    """Where a step's time goes in each variant of `runs` ({label: runs}): host and GPU ms of each stretch
    between probe marks."""
    by_label = {label: segments(variant_runs) for label, variant_runs in runs.items()}
    print(f"{name}: step segments, median ms (host / GPU)" + "".join(f"{label:>18}" for label in by_label))
    for segment in dict.fromkeys(segment for spans in by_label.values() for segment in spans):
        cells = [f"{spans[segment][0]:7.2f} / {spans[segment][1]:7.2f}" if segment in spans else "-"
                 for spans in by_label.values()]
        print(f"  {segment:<40}" + "".join(f"{cell:>18}" for cell in cells))


def profiled(webui, bodies):
    """{label: (seconds, record)}: one generation of each body in `bodies`, each under torch's profiler."""
    records = {}
    for label, body in bodies.items():
        webui.post("/sag-bench/profile", {})
        records[label] = timed(webui, body)
    return records


def row(name, gpu, runs):
    """The row of one configuration from `measure`'s runs."""
    off, on, plain, old, old_off = runs["off"], runs["on"], runs["plain"], runs.get("old"), runs.get("old_off")
    batch = CONFIGS[name][2]
    t_off, t_sag = statistics.median(s for s, _ in off), statistics.median(s for s, _ in on)
    t_unet = call_ms(plain, batch, "host")
    paired = statistics.median(t_on / t_off for (t_off, _), (t_on, _) in zip(off, on))
    fastest_off = min(s for s, _ in off)
    print(f"{name}: one isolated plain pass over {batch} rows {t_unet:.1f} ms (GPU {call_ms(plain, batch):.1f}); "
          f"SAG's pass, GPU / host: {call_ms(on, batch):.1f} / {call_ms(on, batch, 'host'):.1f} ms; "
          f"the CFG call over {2 * batch} rows, GPU / host: {call_ms(off, 2 * batch):.1f} / "
          f"{call_ms(off, 2 * batch, 'host'):.1f} ms with SAG off, {call_ms(on, 2 * batch):.1f} / "
          f"{call_ms(on, 2 * batch, 'host'):.1f} ms with SAG on; median of the repeats' own on/off ratios "
          f"{paired:.3f}; fastest on / fastest off {min(s for s, _ in on) / fastest_off:.3f} against a floor of "
          f"{1 + STEPS * t_unet / 1000 / fastest_off:.3f} there; cudaMalloc calls per generation "
          f"{mallocs(off)} off, {mallocs(on)} on", flush=True)
    return {"config": name, "gpu": gpu, "steps": STEPS, "repeats": len(on), "t_off_s": round(t_off, 4),
            "t_sag_s": round(t_sag, 4), "t_old_s": round(statistics.median(s for s, _ in old), 4) if old else None,
            "t_old_off_s": round(statistics.median(s for s, _ in old_off), 4) if old_off else None,
            "t_unet_b_ms": round(t_unet, 3), "floor_ratio": round(1 + STEPS * t_unet / 1000 / t_off, 4),
            "t_off_plus_pass_s": round(statistics.median(s for s, _ in plain), 4),
            "peak_off_mib": round(max(r["peak_mib"] for _, r in off), 1),
            "peak_sag_mib": round(max(r["peak_mib"] for _, r in on), 1)}


def report(name, gpu, runs):
    """The row of one configuration, printed with where its steps' time goes."""
    result = row(name, gpu, runs)
    print(json.dumps(result), flush=True)
    print_steps(name, {label: runs[label] for label in ("off", "plain", "on", "old", "old_off") if runs.get(label)})
    return result


def print_table(rows):
    print(f"{'config':<14}{'off s':>8}{'SAG s':>8}{'SAG/off':>9}{'old/its off':>12}{'floor':>8}{'target':>8}"
          f"{'off+pass/off':>14}{'peak off':>10}{'peak SAG':>10}")
    for r in rows:
        old = f"{r['t_old_s'] / r['t_old_off_s']:.3f}" if r["t_old_s"] and r.get("t_old_off_s") else "-"
        print(f"{r['config']:<14}{r['t_off_s']:>8.3f}{r['t_sag_s']:>8.3f}{r['t_sag_s'] / r['t_off_s']:>9.3f}{old:>12}"
              f"{r['floor_ratio']:>8.3f}{1.03 * r['floor_ratio']:>8.3f}{r['t_off_plus_pass_s'] / r['t_off_s']:>14.3f}"
              f"{r['peak_off_mib']:>10.0f}{r['peak_sag_mib']:>10.0f}")


def write(path, content):
    if path:
        path.write_text(json.dumps(content, indent=2) + "\n")


def run_on_gpu(args):
    """Rows measured now, on a machine with a CUDA GPU (every generation's record goes to `--records`)."""
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip().splitlines()[0]
    common = {"device": "cuda", "checkpoint": "sd1_wide", "layouts": ("sd1_wide", "sdxl_full"), "extra_extensions": [PROBE],
              "checkpoint_cache": os.environ.get("SD_WEBUI_TEST_CACHE"),
              "options": {"cross_attention_optimization": args.attention} if args.attention else None}
    ours_webui = WebUI(**common)
    old_webui = WebUI(**{**common, "with_extension": False,
                         "extra_extensions": [PROBE, args.old_extension]}) if args.old_extension else None
    rows, records = [], {"gpu": gpu, "configs": {}}
    try:
        for server in filter(None, (ours_webui, old_webui)):
            server.start()
        for name in args.configs:
            print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)  # beside run.sh's nvidia-smi dmon record
            checkpoint, size, batch, warmup, repeats = CONFIGS[name]
            ours_webui.use_checkpoint(checkpoint)
            bodies = {label: payload(size, batch, title, script_args)
                      for label, (title, script_args) in (("off", OURS_OFF), ("on", OURS_ON), ("old", OLD_ON),
                                                          ("old_off", OLD_OFF))}
            variants = [("off", ours_webui, bodies["off"], ()), ("on", ours_webui, bodies["on"], ()),
                        ("plain", ours_webui, bodies["off"], ("/sag-bench/plain-pass",))]
            if old_webui is not None and checkpoint == "sd1_wide":  # the old extension fails on SDXL
                variants += [("old", old_webui, bodies["old"], ()), ("old_off", old_webui, bodies["old_off"], ())]
            runs = measure(variants, warmup, repeats)
            rows.append(report(name, gpu, runs))
            if args.profile:
                runs["profiled"] = profiled(ours_webui, {"off": bodies["off"], "on": bodies["on"]})
            records["configs"][name] = runs
            write(args.json, rows)  # after every row: a run cut short keeps what it measured
            write(args.records, records)
    finally:
        for server in filter(None, (ours_webui, old_webui)):
            server.stop()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-extension", type=Path, help="the old SAG extension's directory")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--attention", help="the webui's cross-attention optimization (default: its Automatic)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--records", type=Path, help="write every generation's probe record here")
    parser.add_argument("--profile", action="store_true", help="profile one more generation off and one on")
    parser.add_argument("--from-records", type=Path, nargs="+",
                        help="no GPU: recompute the rows from --records files (of runs split by --configs)")
    args = parser.parse_args()
    if args.from_records:
        rows = [report(name, records["gpu"], runs) for records in map(json.loads, map(Path.read_text, args.from_records))
                for name, runs in records["configs"].items()]
        write(args.json, rows)
    else:
        rows = run_on_gpu(args)
    print_table(rows)


if __name__ == "__main__":
    main()
