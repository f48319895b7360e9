"""Benchmark probe for benchmarks/webui_gpu.py (a test extension, not part of SAG).

Per generation it records the peak CUDA memory allocated, how many cudaMalloc and cudaFree calls the
caching allocator made (a generation that keeps allocating fresh device memory pays for it), and the
time of every model call, by batch size (the median of that generation's calls): CUDA events around the
k-diffusion denoiser's forward, the call the sampler and SAG's pass make (the webui's wrappers, c_in
scaling, sigma to t, apply_model, the UNet), so a call's time is what it costs inside the generation,
launch gaps and Python included; the events are read once, when the generation ends. After a
`POST /sag-bench/profile`, the next generation runs under torch's profiler and the record holds its table
of CUDA kernels by total time. `GET /sag-bench/last` returns the last record.
"""
import statistics

import k_diffusion.external
import torch

import modules.scripts as scripts
from modules import script_callbacks

LAST = {}
PROFILE_NEXT = []  # non-empty: profile the next generation
DENOISERS = (k_diffusion.external.DiscreteEpsDDPMDenoiser, k_diffusion.external.DiscreteVDDPMDenoiser)


class ModelCallTimer:
    """CUDA events around each forward of the k-diffusion denoisers; `times_ms()` maps batch size to the
    median of its calls."""

    def __init__(self):
        self.events = []
        self.originals = {cls: cls.__dict__["forward"] for cls in DENOISERS}
        for cls, forward in self.originals.items():
            cls.forward = self.timed(forward)

    def timed(self, forward):
        def timed_forward(module, input, sigma, **kwargs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            output = forward(module, input, sigma, **kwargs)
            end.record()
            self.events.append((input.shape[0], start, end))
            return output
        return timed_forward

    def times_ms(self):
        torch.cuda.synchronize()
        by_batch = {}
        for batch, start, end in self.events:
            by_batch.setdefault(batch, []).append(start.elapsed_time(end))
        return {batch: statistics.median(times) for batch, times in by_batch.items()}

    def remove(self):
        for cls, forward in self.originals.items():
            cls.forward = forward


def allocator_calls():
    """(cudaMalloc calls, cudaFree calls) of the caching allocator so far."""
    stats = torch.cuda.memory_stats()
    return stats.get("num_device_alloc", 0), stats.get("num_device_free", 0)


class SagBenchProbe(scripts.Script):
    def title(self):
        return "sag bench probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        p.sag_bench_allocator = allocator_calls()
        p.sag_bench_timer = ModelCallTimer()
        p.sag_bench_profiler = None
        if PROFILE_NEXT:
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            p.sag_bench_profiler = torch.profiler.profile(activities=activities)
            p.sag_bench_profiler.__enter__()
        PROFILE_NEXT.clear()

    def postprocess(self, p, processed, *args):
        timer = p.sag_bench_timer
        LAST.clear()
        mallocs, frees = (now - before for now, before in zip(allocator_calls(), p.sag_bench_allocator))
        LAST.update(peak_mib=torch.cuda.max_memory_allocated() / 2 ** 20, cuda_mallocs=mallocs, cuda_frees=frees)
        if p.sag_bench_profiler is not None:
            p.sag_bench_profiler.__exit__(None, None, None)
            LAST.update(profile=p.sag_bench_profiler.key_averages().table(sort_by="cuda_time_total", row_limit=40))
        timer.remove()
        LAST.update(model_call_ms_by_batch={str(batch): ms for batch, ms in timer.times_ms().items()})


def add_route(_demo, app):
    app.add_api_route("/sag-bench/last", lambda: dict(LAST), methods=["GET"])
    app.add_api_route("/sag-bench/profile", lambda: PROFILE_NEXT.append(True), methods=["POST"])


script_callbacks.on_app_started(add_route)
