"""Benchmark probe for benchmarks/webui_gpu.py and guidance_gpu.py in AUTOMATIC1111's webui (a test extension,
not part of SAG).

Per generation it records the peak CUDA memory allocated, how many cudaMalloc and cudaFree calls the
caching allocator made (a generation that keeps allocating fresh device memory pays for it), and a
timeline of every sampling step: marks, each a host clock reading and a CUDA event, where the webui's CFG
denoiser is entered and left and around every model call inside it (the k-diffusion denoiser's forward:
the webui's wrappers, c_in scaling, sigma to t, apply_model, the UNet; the CFG call over 2B rows and SAG's
pass over B). From it, for each stretch between two consecutive marks of a step (e.g. "call4>end4", a
model call over 4 rows), the median over the generation's steps of its host and its GPU milliseconds,
which say where a step's time goes and whether the host or the GPU sets its pace. The events are read
once, when the generation ends. Without a GPU (the CPU webui) both clocks are the host's.

For the next generation only: after a `POST /sag-bench/profile` it runs under torch's profiler and the
record holds its operator tables by CUDA and by host time; after a `POST /sag-bench/plain-pass` each step
makes one more model call, over the last half of the CFG call's rows (the uncond rows, SAG's pass
without SAG), right after it, and drops its output: isolated, with the GPU waited for before and after
it, so its host span ("callB>endB") is its whole cost, whether the host or the GPU sets its pace. After a
`POST /sag-bench/tile-calls` each step makes four more model calls after its CFG call, each isolated, their
output dropped: over 1, 2, 3 and 4 tiles of B rows (the uncond rows, as SAG's pass; the CFG call's own rows;
that call with one or two more copies of the cond rows, as PAG's and SEG's rows in it): the medians of
their wall times are the record's `call_ms` {tiles: ms}. `GET /sag-bench/last` returns the last record.

The least a method's work can cost, done in a generation without the method: after a `POST /sag-bench/rows-1`
(or `rows-2`) the CFG call of each step carries one (two) more copies of the cond rows between the cond and
the uncond rows, as PAG's and SEG's rows ride in it, their output unread; after a `POST /sag-bench/extra-call`
each step makes one more model call over the uncond rows right after the CFG call, as SAG's pass, not
isolated. Both may be asked for the same generation.
"""
import statistics
import sys
import time
from pathlib import Path

import k_diffusion.external
import torch

from modules import script_callbacks
from modules.sd_samplers_cfg_denoiser import CFGDenoiser

sys.path.append(str(Path(__file__).resolve().parents[3]))  # the repository, for benchmarks.probe_routes
import benchmarks.probe_routes as probe_routes  # noqa: E402
from sag_ext.hosts.a1111 import add_cond_copies  # noqa: E402
from sag_ext.hosts.rows import row_count  # noqa: E402

CUDA, synchronize = probe_routes.CUDA, probe_routes.synchronize
LAST = {}
NEXT = set()  # what the next generation does besides timing: "profile", "plain-pass", "tile-calls", "rows-1",
# "rows-2", "extra-call"
DENOISERS = (k_diffusion.external.DiscreteEpsDDPMDenoiser, k_diffusion.external.DiscreteVDDPMDenoiser)


class HostEvent:
    """A CUDA event's stand-in without a GPU: the host clock."""

    def record(self):
        self.seconds = time.perf_counter()

    def elapsed_time(self, end):
        return 1000 * (end.seconds - self.seconds)


def rows_of(value, index):
    """`value` (a tensor, or a dict/list/tuple of them: the denoiser's cond) at the rows `index` (a slice or
    an index tensor)."""
    if isinstance(value, torch.Tensor):
        return value[index]
    if isinstance(value, dict):
        return {key: rows_of(item, index) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(rows_of(item, index) for item in value)
    return value


def tile_rows(batch, device):
    """{tiles: the rows of a CFG call over cond and uncond (B = `batch` rows each) that make that many tiles}:
    1 the uncond rows, 2 the call's own, 3 and 4 with one or two more copies of the cond rows before the uncond."""
    cond, uncond = torch.arange(batch, device=device), torch.arange(batch, 2 * batch, device=device)
    return {tiles: torch.cat([cond] * (tiles - 1) + [uncond]) for tiles in (1, 2, 3, 4)}


class StepTimeline:
    """Marks (name, host seconds, event) at the CFG denoiser's entry ("step") and exit ("done") and around
    each model call ("callN", "endN" for N rows), patched into the classes for one generation; the extra
    calls and rows of the probe's requests."""

    def __init__(self, plain_pass=False, tile_calls=False, extra_rows=0, extra_call=False):
        self.marks = []
        self.plain_pass, self.extra_rows, self.extra_call = plain_pass, extra_rows, extra_call
        self.tile_ms = {} if tile_calls else None
        self.calls_in_step = 0
        self.originals = {cls: cls.__dict__["forward"] for cls in (CFGDenoiser, *DENOISERS)}
        CFGDenoiser.forward = self.step_wrapper(self.originals[CFGDenoiser])
        for cls in DENOISERS:
            cls.forward = self.call_wrapper(self.originals[cls])

    def mark(self, name):
        event = torch.cuda.Event(enable_timing=True) if CUDA else HostEvent()
        event.record()
        self.marks.append((name, time.perf_counter(), event))

    def step_wrapper(self, forward):
        def step_forward(module, *args, **kwargs):
            self.mark("step")
            self.calls_in_step = 0
            output = forward(module, *args, **kwargs)
            self.mark("done")
            return output
        return step_forward

    def call_wrapper(self, forward):
        def timed(module, x, sigma, isolated=False, **kwargs):
            if isolated:
                synchronize()
            self.mark(f"call{x.shape[0]}")
            output = forward(module, x, sigma, **kwargs)
            if isolated:
                synchronize()
            self.mark(f"end{x.shape[0]}")
            return output

        def call_forward(module, x, sigma, **kwargs):
            output = timed(module, x, sigma, **kwargs)
            self.calls_in_step += 1
            if self.calls_in_step == 1 and x.shape[0] % (2 + self.extra_rows) == 0:
                uncond = slice(-(x.shape[0] // (2 + self.extra_rows)), None)
                if self.plain_pass or self.extra_call:
                    timed(module, x[uncond], sigma[uncond], isolated=self.plain_pass, **rows_of(kwargs, uncond))
                if self.tile_ms is not None:
                    self.time_tile_calls(forward, module, x, sigma, kwargs)
            return output
        return call_forward

    def time_tile_calls(self, forward, module, x, sigma, kwargs):
        for tiles, index in tile_rows(x.shape[0] // 2, x.device).items():
            synchronize()
            start = time.perf_counter()
            forward(module, x[index], sigma[index], **rows_of(kwargs, index))
            synchronize()
            self.tile_ms.setdefault(tiles, []).append(1000 * (time.perf_counter() - start))

    def steps(self):
        """Each whole step's marks: from one "step" mark up to the next."""
        starts = [i for i, (name, _, _) in enumerate(self.marks) if name == "step"]
        return [self.marks[a:b + 1] for a, b in zip(starts, starts[1:])]

    def segments_ms(self):
        """"a>b": {"host": ms, "gpu": ms}, medians over the whole steps of the stretch from mark a to mark b
        (the last, "done>step", is the sampler's own work between two steps)."""
        spans = {}
        for step in self.steps():
            for (a, host_a, event_a), (b, host_b, event_b) in zip(step, step[1:]):
                host, gpu = spans.setdefault(f"{a}>{b}", ([], []))
                host.append(1000 * (host_b - host_a))
                gpu.append(event_a.elapsed_time(event_b))
        return {name: {"host": round(statistics.median(host), 3), "gpu": round(statistics.median(gpu), 3)}
                for name, (host, gpu) in spans.items()}

    def read(self):
        """The generation's step segments (waits for the GPU once)."""
        synchronize()
        call_ms = {tiles: statistics.median(ms) for tiles, ms in (self.tile_ms or {}).items()}
        return {"step_segments_ms": self.segments_ms(), "steps_timed": len(self.steps()), "call_ms": call_ms}

    def remove(self):
        for cls, forward in self.originals.items():
            cls.forward = forward


def add_rows(params):
    """on_cfg_denoiser: the step's CFG call carries the generation's `extra_rows` more copies of the cond rows
    after them (their output unread: the webui reads the cond rows from the front, the uncond from the end)."""
    timeline = getattr(getattr(params.denoiser, "p", None), "sag_bench_timeline", None)
    if timeline is None or not timeline.extra_rows:
        return
    add_cond_copies(params, row_count(params.text_uncond), timeline.extra_rows)


def allocator_calls():
    """(cudaMalloc calls, cudaFree calls) of the caching allocator so far."""
    stats = torch.cuda.memory_stats() if CUDA else {}
    return stats.get("num_device_alloc", 0), stats.get("num_device_free", 0)


class SagBenchProbe(probe_routes.AlwaysOnProbe):
    probe_title = "sag bench probe"

    def process(self, p, *args):
        probe_routes.start_peak()
        p.sag_bench_allocator = allocator_calls()
        p.sag_bench_timeline = StepTimeline(plain_pass="plain-pass" in NEXT, tile_calls="tile-calls" in NEXT,
                                            extra_rows=probe_routes.extra_rows(NEXT),
                                            extra_call="extra-call" in NEXT)
        p.sag_bench_profiler = None
        if "profile" in NEXT:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if CUDA:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            p.sag_bench_profiler = torch.profiler.profile(activities=activities)
            p.sag_bench_profiler.__enter__()
        NEXT.clear()

    def postprocess(self, p, processed, *args):
        LAST.clear()
        mallocs, frees = (now - before for now, before in zip(allocator_calls(), p.sag_bench_allocator))
        LAST.update(peak_mib=probe_routes.peak_mib(),
                    cuda_mallocs=mallocs, cuda_frees=frees)
        if p.sag_bench_profiler is not None:
            p.sag_bench_profiler.__exit__(None, None, None)
            averages = p.sag_bench_profiler.key_averages()
            LAST.update(profile_by_cuda=averages.table(sort_by="cuda_time_total", row_limit=40),
                        profile_by_host=averages.table(sort_by="self_cpu_time_total", row_limit=40))
        p.sag_bench_timeline.remove()
        LAST.update(p.sag_bench_timeline.read())


script_callbacks.on_cfg_denoiser(add_rows)
probe_routes.register_routes(LAST, NEXT, ("profile", "plain-pass", "tile-calls", "rows-1", "rows-2", "extra-call"))
