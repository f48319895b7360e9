"""Cost of SAG, PAG and SEG per sampling step, on the real ldm UNet with random weights.

For each configuration it runs an Euler sampling loop with batched CFG the way the webui's CFG
denoiser does it (cond rows first, the B uncond rows last, one UNet call over 2B rows, the batch
whatever the `cfg_denoiser` callback made of it), firing the webui's three CFG callbacks into this
extension's A1111 adapter, two ways at a time, step after step:

* plain and with SAG, and the bare UNet over B and 2B rows: the overhead r = (step SAG - step CFG) / T(B)
  is 1 for a SAG that costs exactly one extra UNet pass over the uncond rows;
* PAG, SEG, and both, each beside its work done plainly: B (2B for both) more copies of the cond rows
  in the step's call, their output unread (`PlainRows`, as the probe extensions do in a webui). The
  ratio of each step to its work's (`<c>_work_r`) is 1 for a method that costs exactly its rows; on a
  step bound by the host (`host-sd15`: SD1.5's layers at a tenth of their width over an 8x8 latent on
  the CPU, where every operation costs about its dispatch, as in a launch-bound GPU step) it measures
  what the method's own Python and operations add.

    python benchmarks/bench_sag.py                       # every GPU configuration
    python benchmarks/bench_sag.py --configs sd15-512-b1 sdxl-2048-b1 --json out.json
    python benchmarks/bench_sag.py --profile sdxl-2048-b1  # profiler table of one SAG step
    python benchmarks/bench_sag.py --tiny                # seconds on the CPU (smoke test)
    python benchmarks/bench_sag.py --configs host-sd15 --steps 400   # host-bound steps on the CPU

As in the webui: fp16 weights under autocast on CUDA (fp32 on the CPU), TF32 matmuls allowed, and
ldm's CrossAttention replaced by PyTorch SDPA (the webui's "sdp" optimisation patches the same
method). The two ways of a pair take turns step by step (Bench._alternate). Peak memory is the highest
torch.cuda.max_memory_allocated of a step, weights included; on the CPU it is reported as 0.
Where a step is launch-bound (small latents on a fast GPU: T(B) close to T(2B)), r measures host
overhead as much as GPU work, and its spread between runs is of the order of a few hundredths.
"""
import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.modules import attention as ldm_attention  # noqa: E402
from ldm.modules.attention import SpatialTransformer  # noqa: E402
from ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

from harness.diffusion import CompVisDenoiser, sd_alphas_cumprod  # noqa: E402
from harness.unets import randomise_zero_layers  # noqa: E402
from sag_ext.core import capture as sag_capture, session as sag_session  # noqa: E402
from sag_ext.core.params import SagParams  # noqa: E402
from sag_ext.core.perturbed import PerturbedSession  # noqa: E402
from sag_ext.core.perturbed_params import PagParams, SegParams  # noqa: E402
from sag_ext.core.session import SagSession  # noqa: E402
from sag_ext.hosts.a1111 import A1111Adapter, add_cond_copies  # noqa: E402
from sag_ext.hosts.rows import row_count  # noqa: E402

CFG_SCALE = 7.0
MIB = 1 << 20


# ---- the UNet ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arch:
    """A UNet layout. `depths` maps a transformer's channel count to its depth (absent: 1)."""

    channels: int
    channel_mult: tuple
    attention_resolutions: tuple
    context_dim: int
    num_heads: int = -1
    num_head_channels: int = -1
    use_linear: bool = False
    depths: tuple = ()
    num_res_blocks: int = 2


def sd15(channels=320, context_dim=768, **tiny):
    return Arch(channels, (1, 2, 4, 4), (4, 2, 1), context_dim, num_heads=8, **tiny)


def sdxl_like(channels=320, context_dim=2048, head_channels=64, deep=10, **tiny):
    """SDXL base: transformer depth 2 at the 2x level, `deep` (10) at the 4x level and in the middle; no ADM vector."""
    return Arch(channels, (1, 2, 4), (4, 2), context_dim, num_head_channels=head_channels, use_linear=True,
                depths=((2 * channels, 2), (4 * channels, deep)), **tiny)


class DeepSpatialTransformer(SpatialTransformer):
    """ldm's SpatialTransformer with depth > 1 fed one context tensor.

    Upstream indexes `context[i]` for block i but wraps a tensor as a one-element list, so depth > 1
    only works with a list of contexts; every block of SDXL gets the same text context.
    """

    def forward(self, x, context=None):
        return super().forward(x, [context] * len(self.transformer_blocks))


def _deepen(unet: UNetModel, arch: Arch) -> None:
    """Give each SpatialTransformer the depth `arch.depths` sets for its channels (ldm builds one depth for all)."""
    depths = dict(arch.depths)
    for block in (*unet.input_blocks, unet.middle_block, *unet.output_blocks):
        for index, layer in enumerate(block):
            depth = depths.get(getattr(layer, "in_channels", None), 1) if isinstance(layer, SpatialTransformer) else 1
            if depth > 1:
                attn = layer.transformer_blocks[0].attn1
                block[index] = DeepSpatialTransformer(
                    layer.in_channels, attn.heads, attn.to_q.out_features // attn.heads, depth=depth,
                    context_dim=[arch.context_dim] * depth, use_linear=arch.use_linear, use_checkpoint=False)


def sdpa_forward(self, x, context=None, mask=None):
    """ldm CrossAttention.forward through F.scaled_dot_product_attention (the webui's sdp attention)."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    batch, tokens, inner = q.shape
    q, k, v = (t.view(batch, -1, self.heads, inner // self.heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.to_out(out.transpose(1, 2).reshape(batch, tokens, inner))


def use_sdpa_attention() -> None:
    """Patch ldm's attention for this process: SDPA, and never xformers (must run before building)."""
    ldm_attention.XFORMERS_IS_AVAILBLE = False
    ldm_attention.CrossAttention.forward = sdpa_forward


def build_unet(arch: Arch, device: torch.device, dtype: torch.dtype, seed: int = 0) -> UNetModel:
    """Random-weight UNet; ldm's zero-initialised output layers get random weights too."""
    torch.manual_seed(seed)
    with device:
        unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=arch.channels,
                         num_res_blocks=arch.num_res_blocks, attention_resolutions=list(arch.attention_resolutions),
                         channel_mult=list(arch.channel_mult), num_heads=arch.num_heads,
                         num_head_channels=arch.num_head_channels, use_spatial_transformer=True,
                         transformer_depth=1, context_dim=arch.context_dim,
                         use_linear_in_transformer=arch.use_linear, legacy=False)
        _deepen(unet, arch)
        randomise_zero_layers(unet)
    return unet.to(dtype).eval().requires_grad_(False)


# ---- the webui's sampling path ---------------------------------------------------------------------

def denoiser(unet: UNetModel, device: torch.device) -> CompVisDenoiser:
    """k-diffusion's CompVisDenoiser around the eps UNet, with SD's schedule."""
    return CompVisDenoiser(lambda x, t, cond: unet(x, t, context=cond["c_crossattn"][0]), sd_alphas_cumprod().to(device))


class KDiffusionOnly:
    """The bench samples with k-diffusion only: no denoiser is of the webui's timestep family."""


def webui_adapter(unet: UNetModel) -> A1111Adapter:
    """SAG's A1111 adapter over what it reads of a webui that runs `unet`: the model in use, no alternative
    UNet."""
    sd_model = SimpleNamespace(model=SimpleNamespace(diffusion_model=unet, conditioning_key="crossattn"),
                               cond_stage_key="txt")
    return A1111Adapter(SimpleNamespace(shared=SimpleNamespace(sd_model=sd_model),
                                        sd_unet=SimpleNamespace(current_unet=None), script_callbacks=None,
                                        CFGDenoiserTimesteps=KDiffusionOnly))


def labelled(fn, label):
    """`fn` inside a profiler range named `label`."""
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def cfg_denoise(model: CompVisDenoiser, x, sigma, text_cond, text_uncond, callbacks=None, p=None, step=0,
                total_steps=1):
    """One call of the webui's CFGDenoiser (k-diffusion), firing its three CFG callbacks into `callbacks` (this
    extension's A1111 adapter, whose sessions `p` carries, or PlainRows) where the webui fires them; the UNet
    call takes the batch as `cfg_denoiser` left it, cond rows read from the front and uncond from the end."""
    rows = x.shape[0]
    params = SimpleNamespace(x=torch.cat([x, x]), image_cond=x.new_zeros(2 * rows, 5, 1, 1),  # txt2img's
                             sigma=torch.cat([sigma, sigma]), text_cond=text_cond, text_uncond=text_uncond,
                             denoiser=SimpleNamespace(p=p, step=step, total_steps=total_steps, mask=None, nmask=None))
    if callbacks is not None:
        callbacks.on_cfg_denoiser(params)
    with torch.profiler.record_function("cfg: unet call"):
        x_out = model(params.x, params.sigma, cond={"c_crossattn": [torch.cat([params.text_cond, params.text_uncond])],
                                                    "c_concat": [params.image_cond]})
    if callbacks is not None:
        with torch.profiler.record_function("guidance: end_step"):
            callbacks.on_cfg_denoised(SimpleNamespace(x=x_out, inner_model=labelled(model, "guidance: extra pass")))
    uncond = x_out[-rows:]
    after_cfg = SimpleNamespace(x=uncond + CFG_SCALE * (x_out[:rows] - uncond))
    if callbacks is not None:
        callbacks.on_cfg_after_cfg(after_cfg)
    return after_cfg.x


class PlainRows:
    """CFG callbacks that do PAG's or SEG's work (`copies` 1) or both's (2) without the methods: copies of the
    cond rows in the step's own call, with the adapter's own helper, their output unread."""

    def __init__(self, copies: int):
        self.copies = copies

    def on_cfg_denoiser(self, params) -> None:
        add_cond_copies(params, row_count(params.text_uncond), self.copies)

    def on_cfg_denoised(self, params) -> None:
        pass

    def on_cfg_after_cfg(self, params) -> None:
        pass


def sampling_sigmas(model: CompVisDenoiser, steps: int) -> torch.Tensor:
    """Geometric from SD's largest to its smallest sigma, then 0 (step times do not depend on it)."""
    high, low = model.sigmas[-1].log().item(), model.sigmas[0].log().item()
    sigmas = torch.linspace(high, low, steps, device=model.sigmas.device).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class Timer:
    """Per-call wall times: CUDA events on the GPU (read once at the end), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans = []

    def __call__(self, fn, *args):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            self.spans.append((start, end))
        else:
            start = time.perf_counter()
            out = fn(*args)
            self.spans.append(time.perf_counter() - start)
        return out

    def times_ms(self, skip: int) -> list:
        """The times of all calls but the first `skip`, in milliseconds."""
        if self.cuda:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) for start, end in self.spans[skip:]]
        return [seconds * 1e3 for seconds in self.spans[skip:]]


# ---- measurements -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    name: str
    arch: Arch
    pixels: int
    batch: int
    sag: bool = True  # SAG is timed too (it needs a middle block of 2x2 tokens or more)


GPU_CONFIGS = [Config("sd15-512-b1", sd15(), 512, 1), Config("sd15-512-b4", sd15(), 512, 4),
               Config("sd15-1024-b1", sd15(), 1024, 1), Config("sdxl-1024-b1", sdxl_like(), 1024, 1),
               Config("sdxl-1024-b4", sdxl_like(), 1024, 4), Config("sdxl-2048-b1", sdxl_like(), 2048, 1)]
TINY_CONFIGS = [  # 32x32 latents; narrow, shallow and with a short context, for the CPU
    Config("tiny-sd15", sd15(channels=32, context_dim=64, num_res_blocks=1), 256, 1),
    Config("tiny-sdxl", sdxl_like(channels=32, context_dim=64, head_channels=8, deep=3, num_res_blocks=1), 256, 2)]
HOST_CONFIGS = [Config("host-sd15", sd15(channels=32, context_dim=64), 64, 1, sag=False)]  # SD1.5's layers, host-bound
# PAG, SEG and both: their sessions' methods, and the copies of the cond rows that are their work
PERTURBED = {"pag": ((PagParams,), 1), "seg": ((SegParams,), 1), "pag_seg": ((PagParams, SegParams), 2)}


def _median_and_iqr(values: list) -> tuple:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return quartiles[1], quartiles[2] - quartiles[0]


class Bench:
    """One configuration's model, inputs and sampling schedule."""

    def __init__(self, config: Config, unet: UNetModel, device: torch.device, warmup: int, steps: int):
        self.config, self.device, self.warmup, self.steps = config, device, warmup, steps
        self.unet, self.model, self.adapter = unet, denoiser(unet, device), webui_adapter(unet)
        generator = torch.Generator(device).manual_seed(1)
        size, rows, context = config.pixels // 8, config.batch, config.arch.context_dim
        self.noise = torch.randn(rows, 4, size, size, generator=generator, device=device)
        self.text_cond = torch.randn(rows, 77, context, generator=generator, device=device)
        self.text_uncond = torch.randn(rows, 77, context, generator=generator, device=device)
        self.sigmas = sampling_sigmas(self.model, warmup + steps)

    def autocast(self):
        cuda = self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()

    @staticmethod
    def generation(*params):
        """The webui's processing object of a generation with the methods of `params` on (SAG's session, or PAG's
        and SEG's), and that session."""
        p = SimpleNamespace(is_hr_pass=False, extra_generation_params={})
        if isinstance(params[0], SagParams):
            session = SagSession(params[0])
            session.attach_to(p)
        else:
            for each in params:
                session = PerturbedSession.for_generation(p, each.METHOD.key)
                session.add(each)
        return p, session

    def _step(self, x, index, callbacks=None, p=None):
        """Euler step `index` of the webui's k-diffusion sampler, its CFG callbacks fired into `callbacks`."""
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        denoised = cfg_denoise(self.model, x, sigma.expand(x.shape[0]), self.text_cond, self.text_uncond,
                               callbacks, p, index, len(self.sigmas) - 1)
        return x + (x - denoised) / sigma * (sigma_next - sigma)

    def _unet_inputs(self, rows: int):
        """(x, t, context) for a bare UNet call over `rows` rows."""
        reps = -(-rows // self.config.batch)
        return (self.noise.repeat(reps, 1, 1, 1)[:rows], torch.full((rows,), 500, device=self.device),
                self.text_cond.repeat(reps, 1, 1)[:rows])

    def _alternate(self, first: tuple, second: tuple, bare_calls: dict) -> tuple:
        """Time the steps of two ways of sampling, `first` and `second` = (name, callbacks, p), in turn, step after
        step (they swap places every other step, so drift hits both alike), each following its own latents, and
        after each pair the bare UNet calls `bare_calls` {name: (x, t, context)}: ({name: ms of each timed step or
        call}, {name: peak MiB}, whether every latent stayed finite). Peak memory is the allocator's high-water
        mark within each timed step (host-side bookkeeping, no sync). Once a method's first step has attached its
        hooks they stay, as in a webui generation, so the other way's steps pass through them disarmed, a few
        microseconds."""
        cuda = self.device.type == "cuda"
        timers = {name: Timer(self.device) for name in [first[0], second[0], *bare_calls]}
        peaks = {first[0]: 0.0, second[0]: 0.0}
        latents = {first[0]: self.noise * self.sigmas[0], second[0]: self.noise * self.sigmas[0]}
        with torch.no_grad(), self.autocast():
            for index in range(len(self.sigmas) - 1):
                for name, callbacks, p in (first, second) if index % 2 == 0 else (second, first):
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    latents[name] = timers[name](self._step, latents[name], index, callbacks, p)
                    if cuda:
                        peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / MIB)
                for name, inputs in bare_calls.items():
                    timers[name](self.unet, *inputs)
        finite = all(bool(x.isfinite().all()) for x in latents.values())
        return {name: timer.times_ms(self.warmup) for name, timer in timers.items()}, peaks, finite

    def _sag(self) -> dict:
        """SAG beside plain CFG steps, and the bare UNet over B and 2B rows."""
        p, session = self.generation(SagParams(enabled=True))
        ms, peaks, finite = self._alternate(("cfg", None, None), ("sag", self.adapter, p), {
            "unet_b": self._unet_inputs(self.config.batch), "unet_2b": self._unet_inputs(2 * self.config.batch)})
        if not session.active or session.degraded_passes != len(self.sigmas) - 1:
            raise RuntimeError(f"SAG did not run on every step ({session.degraded_passes} passes)")
        session.close()
        cfg, sag, t_b, t_2b = (statistics.median(ms[name]) for name in ("cfg", "sag", "unet_b", "unet_2b"))
        r, r_iqr = _median_and_iqr([(s - c) / t for c, s, t in zip(ms["cfg"], ms["sag"], ms["unet_b"])])
        return {"step_cfg_ms": cfg, "step_sag_ms": sag, "unet_b_ms": t_b, "unet_2b_ms": t_2b, "overhead_r": r,
                "overhead_r_of_medians": (sag - cfg) / t_b, "overhead_r_iqr": r_iqr,
                "peak_cfg_mib": peaks["cfg"], "peak_sag_mib": peaks["sag"],
                "peak_ratio": peaks["sag"] / peaks["cfg"] if peaks["cfg"] else 1.0, "outputs_finite": finite}

    def _perturbed(self, name: str) -> dict:
        """PAG, SEG or both (`name`) beside their work done plainly in the step's call."""
        methods, copies = PERTURBED[name]
        p, session = self.generation(*(method(enabled=True) for method in methods))
        work = f"{name}_work"
        ms, peaks, finite = self._alternate((work, PlainRows(copies), None), (name, self.adapter, p), {})
        guided = [int(session.guided_steps.get(method.METHOD.key, 0)) for method in methods]
        if not session.active or guided != [len(self.sigmas) - 1] * len(methods):
            raise RuntimeError(f"{name} did not guide every step ({guided})")
        session.close()
        r, r_iqr = _median_and_iqr([m / w for m, w in zip(ms[name], ms[work])])
        return {f"step_{name}_ms": statistics.median(ms[name]), f"step_{work}_ms": statistics.median(ms[work]),
                f"{name}_work_r": r, f"{name}_work_r_iqr": r_iqr, f"peak_{name}_mib": peaks[name],
                f"peak_{work}_mib": peaks[work], f"{name}_outputs_finite": finite}

    def run(self) -> dict:
        """SAG beside plain CFG steps, then PAG, SEG and both beside their work, each pair step after step."""
        row = {"config": self.config.name, "batch": self.config.batch, "pixels": self.config.pixels,
               "latent": self.config.pixels // 8, **(self._sag() if self.config.sag else {})}
        for name in PERTURBED:
            row.update(self._perturbed(name))
        return {**row, "warmup": self.warmup, "timed_steps": self.steps}


def environment(device: torch.device) -> dict:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": device.type, "card": card, "torch": torch.__version__}


def run_configs(configs, device, dtype, warmup, steps):
    """Yield one result row per configuration, building each architecture's UNet once."""
    unet, built_for = None, None
    for config in configs:
        if config.arch != built_for:
            unet = built_for = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            unet, built_for = build_unet(config.arch, device, dtype), config.arch
        yield {**Bench(config, unet, device, warmup, steps).run(), **environment(device)}


def print_table(rows) -> None:
    if not rows:
        return
    print(f"\n{rows[0]['card']}, torch {rows[0]['torch']}; medians of {rows[0]['timed_steps']} steps "
          f"after {rows[0]['warmup']} warm-up")
    sag_rows = [row for row in rows if "overhead_r" in row]
    if sag_rows:
        header = ("config", "step CFG ms", "step SAG ms", "T(B) ms", "T(2B) ms", "r", "r IQR", "peak CFG MiB",
                  "peak SAG MiB", "SAG/CFG mem")
        print("SAG; r: median of the per-step (SAG - CFG) / T(B), r IQR: their spread")
        print(" | ".join(header))
        print(" | ".join("---" for _ in header))
    for row in sag_rows:
        print(f"{row['config']} | {row['step_cfg_ms']:.2f} | {row['step_sag_ms']:.2f} | {row['unet_b_ms']:.2f} | "
              f"{row['unet_2b_ms']:.2f} | {row['overhead_r']:.3f} | {row['overhead_r_iqr']:.3f} | "
              f"{row['peak_cfg_mib']:.0f} | {row['peak_sag_mib']:.0f} | {row['peak_ratio']:.4f}")
    print("\nPAG, SEG and both beside their work (the cond rows copied into the step's call): step ms, work ms, "
          "median of the per-step ratio (IQR), peak MiB / the work's")
    print(" | ".join(("config", *PERTURBED)))
    print(" | ".join("---" for _ in range(len(PERTURBED) + 1)))
    for row in rows:
        print(" | ".join([row["config"]] + [
            f"{row[f'step_{name}_ms']:.2f}, {row[f'step_{name}_work_ms']:.2f}, {row[f'{name}_work_r']:.3f} "
            f"({row[f'{name}_work_r_iqr']:.3f}), {row[f'peak_{name}_mib']:.0f} / {row[f'peak_{name}_work_mib']:.0f}"
            for name in PERTURBED]))


# ---- profiling ----------------------------------------------------------------------------------

@contextlib.contextmanager
def labelled_sag_internals():
    """Profiler ranges around SAG's internals, by wrapping the functions sag_ext's modules call by name."""
    targets = [(sag_capture, "per_key_attention_mass", "sag: attention mass (hook)"),
               (sag_session, "attention_mask", "sag: mask"),
               (sag_session, "degraded_input", "sag: blur + select + re-noise")]
    originals = [(module, name, getattr(module, name)) for module, name, _ in targets]
    for (module, name, label), (_, _, fn) in zip(targets, originals):
        setattr(module, name, labelled(fn, label))
    try:
        yield
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)


def host_syncs(fn, device: torch.device):
    """fn() with CUDA's sync debug mode on: (its result, Counter of 'file:line' of each synchronizing call)."""
    if device.type != "cuda":
        return fn(), Counter()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return out, Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def profile(config: Config, device: torch.device, dtype: torch.dtype, warmup: int, rows: int = 40) -> None:
    """Print a profiler table of one SAG step (after `warmup` SAG steps) and the host syncs of a CFG and a SAG step."""
    bench = Bench(config, build_unet(config.arch, device, dtype), device, warmup, 1)
    p, session = bench.generation(SagParams(enabled=True))
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    x = bench.noise * bench.sigmas[0]
    with torch.no_grad(), bench.autocast():
        for index in range(warmup):
            x = bench._step(x, index, bench.adapter, p)
        _, cfg_syncs = host_syncs(lambda: bench._step(x, warmup), device)
        with labelled_sag_internals(), torch.profiler.profile(activities=activities) as prof:
            _, sag_syncs = host_syncs(lambda: bench._step(x, warmup, bench.adapter, p), device)
            if cuda:
                torch.cuda.synchronize()
    if not session.active or session.degraded_passes != warmup + 1:
        raise RuntimeError(f"SAG did not run on every step ({session.degraded_passes} passes)")
    session.close()

    print(f"\nOne SAG step of {config.name} on {environment(device)['card']}, torch {torch.__version__}")
    print(prof.key_averages().table(sort_by="device_time_total" if cuda else "cpu_time_total", row_limit=rows))
    ranges = {}  # label -> (host ms, device ms) of the work it launched
    for event in prof.events():
        if event.name.startswith(("sag:", "cfg:", "guidance:")) and event.device_type == torch.autograd.DeviceType.CPU:
            host, device_ms = ranges.get(event.name, (0.0, 0.0))
            ranges[event.name] = (host + event.cpu_time_total / 1e3, device_ms + event.device_time_total / 1e3)
    print("labelled ranges: host ms" + (", device ms" if cuda else ""))
    for label, (host, device_ms) in sorted(ranges.items()):
        print(f"  {label}: {host:.3f}" + (f", {device_ms:.3f}" if cuda else ""))
    for kind, index in (("host", 0), ("device", 1)) if cuda else (("host", 0),):
        def spent(label):
            return ranges.get(label, (0.0, 0.0))[index]
        besides = (spent("guidance: end_step") - spent("guidance: extra pass")
                   + spent("sag: attention mass (hook)"))
        print(f"SAG's {kind} time besides its UNet pass (end_step - degraded pass + attention mass): {besides:.3f} ms")
    for name, syncs in (("CFG", cfg_syncs), ("SAG", sag_syncs)):
        print(f"host syncs in a {name} step: {sum(syncs.values())}"
              + "".join(f"\n  {where} x{count}" for where, count in sorted(syncs.items())))


# ---- command line ---------------------------------------------------------------------------------

def main(argv=None) -> int:
    all_configs = {c.name: c for c in GPU_CONFIGS + TINY_CONFIGS + HOST_CONFIGS}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(all_configs), help="configurations to run")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets, 32x32 latent, 1 + 2 steps, on the CPU")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps and calls before timing")
    parser.add_argument("--steps", type=int, default=20, help="timed steps and calls")
    parser.add_argument("--json", type=Path, help="write the result rows to this JSON file")
    parser.add_argument("--profile", choices=sorted(all_configs), help="profile one SAG step of this configuration")
    args = parser.parse_args(argv)

    if args.tiny:
        device, args.warmup, args.steps = torch.device("cpu"), 1, 2
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the webui's enable_tf32
    use_sdpa_attention()

    if args.profile:
        profile(all_configs[args.profile], device, dtype, max(args.warmup, 1))
        return 0
    names = args.configs or [c.name for c in (TINY_CONFIGS if args.tiny else GPU_CONFIGS)]
    rows = []
    for row in run_configs([all_configs[n] for n in names], device, dtype, args.warmup, args.steps):
        rows.append(row)
        sag = (f"CFG {row['step_cfg_ms']:.2f} ms, SAG {row['step_sag_ms']:.2f} ms, r {row['overhead_r']:.3f}, "
               f"memory x{row['peak_ratio']:.4f}; " if "overhead_r" in row else "")
        print(f"{row['config']}: {sag}step / its work: "
              + ", ".join(f"{name} {row[f'{name}_work_r']:.3f}" for name in PERTURBED), flush=True)
        if args.json:  # rewritten after each configuration, so a run cut short keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
