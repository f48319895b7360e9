"""Benchmark probe for benchmarks/guidance_gpu.py in a Forge webui (a test extension, not part of SAG).

Per generation it records the peak CUDA memory allocated. After a `POST /sag-bench/tile-calls` the next
generation's steps each make four more model calls through the host's own batch function
(`calc_cond_uncond_batch`), in a post-CFG function on a clone of the pass's UNet patcher, each isolated (the
GPU waited for before and after it), their output dropped: over B rows (the uncond, as SAG's pass), 2B (the
step's own cond/uncond call), 3B and 4B (that call with one or two more copies of the cond chunk, as PAG's and
SEG's rows in it): the medians of their wall times are `call_ms` {tiles: ms}. After a `POST /sag-bench/profile` the next generation runs
under torch's profiler, with ranges around a denoiser step, the methods' parts and the host's batch function, and
the record holds its operator tables by host and by CUDA time; after a `POST /sag-bench/host-times` the
same ranges are host timers (no GPU wait) and the record holds their medians. `GET /sag-bench/last`
returns the last record.

The least a method's work can cost, done in a generation without the method: after a `POST /sag-bench/rows-1`
(or `rows-2`) the host's UNet call that holds the cond chunk carries one (two) more copies of it, through a
UNet function wrapper as PAG's and SEG's rows ride in it, their output dropped; after a
`POST /sag-bench/extra-call` each step makes one more call of the batch function over the uncond rows in a
post-CFG function, as SAG's pass, not isolated. Both may be asked for the same generation; the record's
`call_rows` lists the rows of the UNet calls the wrapper saw and made, `extra_call_rows` those of the extra
calls.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

from backend.sampling.sampling_function import calc_cond_uncond_batch

sys.path.append(str(Path(__file__).resolve().parents[3]))  # the repository, for benchmarks.probe_routes
import benchmarks.probe_routes as probe_routes  # noqa: E402
from sag_ext.hosts.forge_call import COND, with_chunks_repeated  # noqa: E402

synchronize = probe_routes.synchronize
LAST = {}
CALLS = {  # tiles of B rows: (cond, uncond) of the batch function's call
    1: (lambda args: args["uncond"], lambda args: None),
    2: (lambda args: args["cond"], lambda args: args["uncond"]),
    3: (lambda args: args["cond"] * 2, lambda args: args["uncond"]),
    4: (lambda args: args["cond"] * 3, lambda args: args["uncond"]),
}
NEXT = set()  # what the next generation does besides measuring memory: "tile-calls", "profile", "host-times",
# "rows-1", "rows-2", "extra-call"


def labelled(fn, label):
    """`fn` inside a profiler range named `label`."""
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def host_timed(spans):
    """A `labelled` that adds each call's host milliseconds to `spans[label]` instead (no GPU wait)."""
    def wrap(fn, label):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.setdefault(label, []).append(1000 * (time.perf_counter() - start))
        return wrapper
    return wrap


def label_parts(undo, wrap=labelled):
    """Ranges (`wrap`: profiler ranges, or host timers) around a denoiser step, the methods' parts and the
    host's batch function, for one generation; `undo` gets what puts them back. (The adapter's
    `on_cfg_denoiser` is a callback the webui holds bound: its parts, the sessions' `begin_step`, are timed.)"""
    from modules.sd_samplers_cfg_denoiser import CFGDenoiser
    forge, perturbed, session = (sys.modules.get(f"sag_ext.{name}") for name in ("hosts.forge", "core.perturbed",
                                                                                "core.session"))
    targets = [(CFGDenoiser, (None, "forward"), "host: denoiser step"),
               (session, ("SagSession", "begin_step"), "sag: begin_step"),
               (forge, ("ForgeAdapter", "post_cfg"), "sag: post-CFG function"),
               (session, ("SagSession", "end_step"), "sag: end_step"),
               (sys.modules.get("sag_ext.core.capture"), (None, "per_key_attention_mass"), "sag: attention mass"),
               (session, (None, "degraded_input"), "sag: degraded input"),
               (perturbed, ("PerturbedSession", "begin_step"), "pag/seg: begin_step"),
               (forge, ("ForgeAdapter", "unet_call"), "pag/seg: the host's call with their rows"),
               (forge, (None, "with_chunks_repeated"), "pag/seg: their rows added"),
               (forge, ("ForgeAdapter", "perturbed_post_cfg"), "pag/seg: post-CFG function"),
               (perturbed, ("PerturbedSession", "end_step"), "pag/seg: end_step"),
               (perturbed, ("PerturbedSession", "apply"), "pag/seg: apply"),
               (sys.modules.get("backend.sampling.sampling_function"), (None, "calc_cond_uncond_batch"), "host: calc_cond_uncond_batch")]
    for module, (owner_name, name), label in targets:
        owner = getattr(module, owner_name) if owner_name else module
        if owner is None:
            continue
        original = getattr(owner, name)
        setattr(owner, name, wrap(original, label))
        undo.append(lambda owner=owner, name=name, original=original: setattr(owner, name, original))
    adapter = getattr(sys.modules.get("sag_ext.hosts.forge"), "adapter", None)
    if adapter is not None:
        webui = adapter().webui
        original = webui.calc_cond_uncond_batch
        webui.calc_cond_uncond_batch = wrap(original, "sag: its pass (calc_cond_uncond_batch)")
        undo.append(lambda: setattr(webui, "calc_cond_uncond_batch", original))


def with_cond_copies(copies, seen):
    """A UNet function wrapper: a call that holds the cond chunk carries `copies` more copies of it after its
    chunks, their output dropped; `seen` gets the rows of each call as it came and as it ran."""
    def unet_call(apply_model, args):
        x, timestep, c, chunks = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        if COND in chunks:
            x, timestep, c = with_chunks_repeated(x, timestep, c, chunks, COND, copies)
        seen.append((args["input"].shape[0], x.shape[0]))
        return apply_model(x, timestep, **c)[:args["input"].shape[0]]
    return unet_call


def extra_call(seen):
    """A post-CFG function: one more call of the batch function over the uncond rows, its output dropped (without
    the UNet function wrapper, which takes the chunk of a call's first argument for a cond chunk); `seen` gets
    the rows of each."""
    def post_cfg(args):
        options = {key: value for key, value in args["model_options"].items() if key != "model_function_wrapper"}
        calc_cond_uncond_batch(args["model"], args["uncond"], None, args["input"], args["sigma"], options)
        seen.append(args["input"].shape[0])
        return args["denoised"]
    return post_cfg


class SagForgeBenchProbe(probe_routes.AlwaysOnProbe):
    probe_title = "sag forge bench probe"

    def process(self, p, *args):
        probe_routes.start_peak()
        p.sag_bench_tile_ms = {} if "tile-calls" in NEXT else None
        p.sag_bench_rows = probe_routes.extra_rows(NEXT)
        p.sag_bench_extra_call, p.sag_bench_call_rows, p.sag_bench_extra_rows = "extra-call" in NEXT, [], []
        p.sag_bench_profiler = None
        p.sag_bench_spans = None
        if "host-times" in NEXT:
            p.sag_bench_spans, p.sag_bench_undo = {}, []
            label_parts(p.sag_bench_undo, host_timed(p.sag_bench_spans))
        if "profile" in NEXT:
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            p.sag_bench_profiler = torch.profiler.profile(activities=activities)
            p.sag_bench_undo = []
            label_parts(p.sag_bench_undo)
            p.sag_bench_profiler.__enter__()
        NEXT.clear()

    def process_before_every_sampling(self, p, *args, **kwargs):
        if p.sag_bench_tile_ms is None and not p.sag_bench_rows and not p.sag_bench_extra_call:
            return
        times = p.sag_bench_tile_ms

        def tile_calls(args):
            for tiles, (cond, uncond) in CALLS.items():
                synchronize()
                start = time.perf_counter()
                calc_cond_uncond_batch(args["model"], cond(args), uncond(args), args["input"], args["sigma"],
                                       args["model_options"])
                synchronize()
                times.setdefault(tiles, []).append(1000 * (time.perf_counter() - start))
            return args["denoised"]

        unet = p.sd_model.forge_objects.unet.clone()
        if times is not None:
            unet.set_model_sampler_post_cfg_function(tile_calls)
        if p.sag_bench_extra_call:
            unet.set_model_sampler_post_cfg_function(extra_call(p.sag_bench_extra_rows))
        if p.sag_bench_rows:
            unet.set_model_unet_function_wrapper(with_cond_copies(p.sag_bench_rows, p.sag_bench_call_rows))
        p.sd_model.forge_objects.unet = unet

    def postprocess(self, p, processed, *args):
        LAST.clear()
        LAST.update(peak_mib=probe_routes.peak_mib(),
                    call_ms={tiles: statistics.median(ms) for tiles, ms in (p.sag_bench_tile_ms or {}).items()},
                    call_rows=sorted(set(p.sag_bench_call_rows)), extra_call_rows=sorted(set(p.sag_bench_extra_rows)))
        if p.sag_bench_spans is not None:
            for undo in p.sag_bench_undo:
                undo()
            LAST.update(host_ms={label: {"calls": len(ms), "median": round(statistics.median(ms), 3),
                                         "total": round(sum(ms), 1)} for label, ms in p.sag_bench_spans.items()})
        if p.sag_bench_profiler is not None:
            p.sag_bench_profiler.__exit__(None, None, None)
            for undo in p.sag_bench_undo:
                undo()
            averages = p.sag_bench_profiler.key_averages()
            LAST.update(profile_by_host=averages.table(sort_by="cpu_time_total", row_limit=70),
                        profile_by_cuda=averages.table(sort_by="cuda_time_total", row_limit=25))


probe_routes.register_routes(LAST, NEXT, ("tile-calls", "profile", "host-times", "rows-1", "rows-2", "extra-call"))
