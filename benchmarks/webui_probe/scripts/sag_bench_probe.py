"""Benchmark probe for benchmarks/webui_gpu.py (a test extension, not part of SAG).

Per generation it records the peak CUDA memory allocated and, in the generation after a
`POST /sag-bench/time-unet` only (the hooks would slow the timed generations), the GPU time of every UNet
call by batch size (CUDA events around the forward of the model's `diffusion_model`, so a call's time is
what it costs inside the generation, launch gaps included). After a `POST /sag-bench/profile`, the next
generation runs under torch's profiler and the record holds its table of CUDA kernels by total time.
`GET /sag-bench/last` returns the last record.
"""
import statistics

import torch

import modules.scripts as scripts
from modules import script_callbacks, shared

LAST = {}
TIME_NEXT = []  # non-empty: time the UNet calls of the next generation
PROFILE_NEXT = []  # non-empty: profile the next generation


class UNetTimer:
    """CUDA events around each forward of one module; `times_ms()` maps batch size to its calls' median."""

    def __init__(self, module):
        self.pending, self.events = [], []
        self.handles = [module.register_forward_pre_hook(self.before), module.register_forward_hook(self.after)]

    def before(self, module, args):
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.pending.append((args[0].shape[0], start))

    def after(self, module, args, output):
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        batch, start = self.pending.pop()
        self.events.append((batch, start, end))

    def times_ms(self):
        torch.cuda.synchronize()
        by_batch = {}
        for batch, start, end in self.events:
            by_batch.setdefault(batch, []).append(start.elapsed_time(end))
        return {batch: statistics.median(times) for batch, times in by_batch.items()}

    def remove(self):
        for handle in self.handles:
            handle.remove()


class SagBenchProbe(scripts.Script):
    def title(self):
        return "sag bench probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        p.sag_bench_timer = UNetTimer(shared.sd_model.model.diffusion_model) if TIME_NEXT else None
        p.sag_bench_profiler = None
        if PROFILE_NEXT:
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            p.sag_bench_profiler = torch.profiler.profile(activities=activities)
            p.sag_bench_profiler.__enter__()
        TIME_NEXT.clear()
        PROFILE_NEXT.clear()

    def postprocess(self, p, processed, *args):
        timer = p.sag_bench_timer
        LAST.clear()
        LAST.update(peak_mib=torch.cuda.max_memory_allocated() / 2 ** 20)
        if p.sag_bench_profiler is not None:
            p.sag_bench_profiler.__exit__(None, None, None)
            LAST.update(profile=p.sag_bench_profiler.key_averages().table(sort_by="cuda_time_total", row_limit=40))
        if timer is not None:
            timer.remove()
            LAST.update(unet_ms_by_batch={str(batch): ms for batch, ms in timer.times_ms().items()})


def add_route(_demo, app):
    app.add_api_route("/sag-bench/last", lambda: dict(LAST), methods=["GET"])
    app.add_api_route("/sag-bench/time-unet", lambda: TIME_NEXT.append(True), methods=["POST"])
    app.add_api_route("/sag-bench/profile", lambda: PROFILE_NEXT.append(True), methods=["POST"])


script_callbacks.on_app_started(add_route)
