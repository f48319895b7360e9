"""Whole generations in a real webui on a CUDA GPU: off, this extension's SAG, PAG, SEG, PAG with SEG and all
three, PAG with its rows in a call of their own, and, in Forge, its built-in SAG and PAG.

Runs on a GPU machine through `tests/e2e/gpu/run.sh guidance-bench` (AUTOMATIC1111's webui, set up there
from `pack.py`) or `forge-bench` (a Forge-family webui, from `pack.py --forge`). One webui per checkpoint
(A1111: `sd1_wide`, `sdxl_full`; Forge: `sd15`, `sdxl`) is started with the e2e harness on the GPU in its
default half precision, with this extension and the probe extension (`benchmarks/webui_probe`,
`benchmarks/forge_probe`: peak CUDA memory per generation; isolated plain calls per step on request).
For each configuration (20 steps Euler a,
CFG 5, SAG scale 0.5, blur sigma 2, threshold 1 for both SAGs; PAG scale 3 on the middle block for both PAGs;
SEG scale 3, sigma infinite), after warm-up rounds, each repeat runs every variant once, in an order that
rotates from repeat to repeat:

* t_off_s, t_<c>_s for each variant c (sag, builtin: the built-in SAG, pag, seg, pag_seg, all: SAG+PAG+SEG,
  pag_separate: PAG with the setting "in the webui's own UNet call" off, builtin_pag): the median wall time
  of a whole txt2img request;
* call_ms: {tiles: ms}, the median (over the steps, then the generations) of one isolated model call (A1111:
  the k-diffusion denoiser's; Forge: its batch function) over 1, 2, 3 and 4 tiles of B rows (2: the step's
  own cond/uncond call; 3 and 4: that call with PAG's or PAG's and SEG's rows), in an off generation;
* floor_<c> = 1 + steps * extra_ms / 1000 / t_off_s, the least a variant's work costs by the isolated
  calls: SAG's pass is a call of B rows of its own (extra = T1), PAG's or SEG's rows in the step's call
  (T3 - T2; the built-in PAG and pag_separate do the same work), both (T4 - T2), all three (T4 - T2 + T1);
* work_<c>: the same work done in whole generations without the methods, as a ratio to t_off: off
  generations in which the probe puts B more plain rows (the cond rows again: `rows1`), 2B (`rows2`) into
  the step's own call, or makes one plain call over the uncond rows after it (`call`), or both
  (`rows2_call`), timed in the same rounds (t_rows1_s ...); where a step is neither plainly host- nor
  GPU-bound, more rows cost it other than the isolated calls say, and this is what they cost in the step;
* <c>_work_paired: the median over the repeats of each repeat's ratio of the variant to its work variant,
  and <c>_work_paired_iqr their first and third quartiles: how far a run's own spread reaches;
* peak_off_mib, peak_<c>_mib: the peak CUDA memory allocated during the generation;
* <c>_off_paired: the median over the repeats of each repeat's own ratio to its off generation (the
  variants of a repeat run back to back), which drifts of the machine's speed between repeats do not move;
  where a generation is bound by the host's Python (SDXL at 1024² on an H200), such drifts reach tens of
  percent;
* segments_off_ms, segments_<c>_ms (A1111, whose probe times each step's stretches): {"a>b": [host ms,
  GPU ms]}, the medians over the repeats of where a step's time goes between the CFG denoiser's entry
  ("step"), each model call over N rows ("callN" to "endN") and its exit ("done"): e.g. our work before
  the call and after it, apart from the call itself.

`--profile DIR` writes, per configuration, the profiler's operator tables of one generation off and one
with the first variant on into DIR (Forge: with the host milliseconds of SAG's parts before them).

    python benchmarks/guidance_gpu.py --webui a1111|forge --host "<name> <commit>" --json ROWS.json [--configs ...]

Each run writes the rows of one host; `--merge` joins such files into one (benchmarks/results/guidance-gpu-<commit>.json).
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
from benchmarks.webui_gpu import ROOT, STEPS, measure, segments, write  # noqa: E402
from harness.server import ForgeWebUI, WebUI  # noqa: E402

WEBUIS = {  # --webui: (the harness's class, the probe extension, {model family: the test checkpoint})
    "a1111": (WebUI, ROOT / "benchmarks" / "webui_probe", {"sd15": "sd1_wide", "sdxl": "sdxl_full"}),
    "forge": (ForgeWebUI, ROOT / "benchmarks" / "forge_probe", {"sd15": "sd15", "sdxl": "sdxl"}),
}
CONFIGS = {  # name: (model family, size, batch, warm-up rounds, repeats)
    "sd15-512-b1": ("sd15", 512, 1, 2, 20),
    "sd15-512-b4": ("sd15", 512, 4, 2, 10),
    "sdxl-1024-b1": ("sdxl", 1024, 1, 2, 10),
    "sdxl-2048-b1": ("sdxl", 2048, 1, 1, 2),
}
OURS = "self-attention guidance"
BUILTIN = "selfattentionguidance integrated (sd 1.x, sd 2.x, sdxl)"
BUILTIN_PAG = "perturbedattentionguidance integrated"
SAG_ARGS = [True, 0.5, 2.0, 1.0]
PAG, SEG = {"perturbed-attention guidance": [True, 3.0]}, {"smoothed energy guidance": [{"scale": 3.0}]}
IN_CALL_OFF = {"pag_in_webui_call": False}
VARIANTS = {  # label in the rows: (the scripts on, settings overridden); off: none
    "sag": ({OURS: SAG_ARGS}, {}), "builtin": ({BUILTIN: SAG_ARGS}, {}), "pag": (PAG, {}), "seg": (SEG, {}),
    "pag_seg": ({**PAG, **SEG}, {}), "all": ({OURS: SAG_ARGS, **PAG, **SEG}, {}), "pag_separate": (PAG, IN_CALL_OFF),
    "builtin_pag": ({BUILTIN_PAG: [True, 3.0, 0.0, 0.0, 1.0]}, {}),
}
WORK = {  # label in the rows: the probe's requests that make an off generation do that work without the methods
    "rows1": ("/sag-bench/rows-1",), "rows2": ("/sag-bench/rows-2",), "call": ("/sag-bench/extra-call",),
    "rows2_call": ("/sag-bench/rows-2", "/sag-bench/extra-call"),
}
FLOORS = {  # variant: (its work variant, {tiles: sign} of the isolated calls whose times sum to its extra work)
    "sag": ("call", {1: 1}), "builtin": ("call", {1: 1}), "pag": ("rows1", {3: 1, 2: -1}),
    "seg": ("rows1", {3: 1, 2: -1}), "pag_seg": ("rows2", {4: 1, 2: -1}), "all": ("rows2_call", {4: 1, 2: -1, 1: 1}),
    "pag_separate": ("rows1", {3: 1, 2: -1}), "builtin_pag": ("rows1", {3: 1, 2: -1}),
}


def payload(size, batch, scripts, settings=None):
    return {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": STEPS, "sampler_name": "Euler a",
            "width": size, "height": size, "batch_size": batch, "seed": 1, "cfg_scale": 5,
            "alwayson_scripts": {title: {"args": args} for title, args in scripts.items()},
            "override_settings": settings or {}, "override_settings_restore_afterwards": True}


def paired(runs, label, base):
    """Each repeat's ratio of `label` to `base` ([] if either is missing)."""
    if label not in runs or base not in runs:
        return []
    return [t / t_base for (t, _), (t_base, _) in zip(runs[label], runs[base])]


def median(ratios):
    return round(statistics.median(ratios), 4) if ratios else None


def quartiles(ratios):
    """[first, third] quartile, None for fewer than two."""
    return [round(q, 4) for q in statistics.quantiles(ratios, n=4)[::2]] if len(ratios) > 1 else None


def row(name, gpu, host, runs):
    """The row of one configuration from `measure`'s runs; a built-in's cells are None where the host has
    none (Forge Neo, Forge Classic), a work variant's where it was not measured."""
    seconds = {label: statistics.median(s for s, _ in runs[label]) for label in runs if label != "tile_calls"}
    call_ms = {tiles: statistics.median(record["call_ms"][str(tiles)] for _, record in runs["tile_calls"])
               for tiles in (1, 2, 3, 4)}
    result = {"host": host, "config": name, "gpu": gpu, "steps": STEPS, "repeats": len(runs["off"]),
              "t_off_s": round(seconds["off"], 4), "call_ms": {tiles: round(ms, 3) for tiles, ms in call_ms.items()},
              "peak_off_mib": round(max(record["peak_mib"] for _, record in runs["off"]), 1)}
    for label in VARIANTS:
        measured = label in runs
        work, calls = FLOORS[label]
        extra_ms = sum(sign * call_ms[tiles] for tiles, sign in calls.items())
        result[f"t_{label}_s"] = round(seconds[label], 4) if measured else None
        result[f"floor_{label}"] = round(1 + STEPS * extra_ms / 1000 / seconds["off"], 4)
        result[f"work_{label}"] = round(seconds[work] / seconds["off"], 4) if work in runs else None
        result[f"peak_{label}_mib"] = round(max(record["peak_mib"] for _, record in runs[label]), 1) if measured else None
        result[f"{label}_off_paired"] = median(paired(runs, label, "off"))
        to_work = paired(runs, label, work)
        result[f"{label}_work_paired"], result[f"{label}_work_paired_iqr"] = median(to_work), quartiles(to_work)
    for work in WORK:
        if work in runs:
            result[f"t_{work}_s"] = round(seconds[work], 4)
            result[f"peak_{work}_mib"] = round(max(record["peak_mib"] for _, record in runs[work]), 1)
    for label in ["off", *VARIANTS]:  # A1111's probe times where a step's time goes
        if label in runs and all("step_segments_ms" in record for _, record in runs[label]):
            result[f"segments_{label}_ms"] = {name: [round(ms, 3) for ms in clocks]
                                              for name, clocks in segments(runs[label]).items()}
    return result


def profile(webui, name, bodies, out: Path, host_times: bool):
    """Per body (after one plain warm-up): with `host_times` (Forge's probe), the host milliseconds of a step
    and of SAG's parts in one generation; then the profiler tables of another, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for label, body in bodies.items():
        webui.post("/sdapi/v1/txt2img", body)
        host_ms = {}
        if host_times:
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
    """Per configuration and variant: t / t_off, its floor by the isolated calls, its work in whole generations
    (with the paired ratio to it), and the peak memory over off's."""
    print(f"{'config':<14}{'variant':<14}{'t/t_off':>9}{'floor':>8}{'t/floor':>9}{'work':>8}{'t/work':>8}"
          f"{'paired':>8}{'peak/off':>10}")
    for r in rows:
        for label in VARIANTS:
            if r[f"t_{label}_s"] is None:
                continue
            ratio, work, pair = r[f"t_{label}_s"] / r["t_off_s"], r.get(f"work_{label}"), r.get(f"{label}_work_paired")
            print(f"{r['config']:<14}{label:<14}{ratio:>9.3f}{r[f'floor_{label}']:>8.3f}"
                  f"{ratio / r[f'floor_{label}']:>9.3f}" + (f"{work:>8.3f}{ratio / work:>8.3f}{pair:>8.3f}" if work
                                                             else f"{'':>24}")
                  + f"{r[f'peak_{label}_mib'] / r['peak_off_mib']:>10.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webui", choices=list(WEBUIS), help="the kind of webui at SD_WEBUI_PATH / SD_FORGE_PATH")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--host", help="the host's name and commit, for the rows")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--profile", type=Path, help="write profiler tables of one generation off and one on here")
    parser.add_argument("--skip-timing", action="store_true", help="only --profile")
    parser.add_argument("--repeats", type=int, help="repeats per configuration instead of its own count")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-work", action="store_true", help="leave out the work variants (work_<c>)")
    parser.add_argument("--merge", type=Path, nargs="+", help="no GPU: join these row files into --json")
    args = parser.parse_args()
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(path.read_text())]
        write(args.json, rows)
        print_table(rows)
        return
    if not (args.webui and args.host):
        parser.error("--webui and --host name the webui measured")
    server_class, probe, checkpoints = WEBUIS[args.webui]
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip().splitlines()[0]
    rows = []
    for family in dict.fromkeys(CONFIGS[name][0] for name in args.configs):
        checkpoint = checkpoints[family]
        with server_class(device="cuda", checkpoint=checkpoint, layouts=(checkpoint,), extra_extensions=[probe],
                          checkpoint_cache=os.environ.get("SD_WEBUI_TEST_CACHE")) as webui:
            titles = {script["name"] for script in webui.get("/sdapi/v1/script-info")}
            for name in [name for name in args.configs if CONFIGS[name][0] == family]:
                print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)
                _, size, batch, warmup, repeats = CONFIGS[name]
                off = payload(size, batch, {OURS: [False]})
                measured = [label for label in args.variants if set(VARIANTS[label][0]) <= titles]  # a built-in
                works = [] if args.no_work else [work for work in WORK  # the host lacks is left out
                                                 if any(FLOORS[label][0] == work for label in measured)]
                variants = [("off", webui, off, ()),
                            *[(label, webui, payload(size, batch, *VARIANTS[label]), ()) for label in measured],
                            *[(work, webui, off, WORK[work]) for work in works],
                            ("tile_calls", webui, off, ("/sag-bench/tile-calls",))]
                if args.profile:  # off and the first variant on
                    profile(webui, name, {label: body for label, _, body, _ in variants[:2]}, args.profile,
                            host_times=args.webui == "forge")
                if args.skip_timing:
                    continue
                rows.append(row(name, gpu, args.host, measure(variants, warmup, args.repeats or repeats)))
                print(json.dumps(rows[-1]), flush=True)
                write(args.json, rows)
    print_table(rows)


if __name__ == "__main__":
    main()
