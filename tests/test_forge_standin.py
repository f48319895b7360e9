"""SAG through the Forge-family adapter, on the stand-in of Forge's sampling (tests/forge_standin), against
the float64 reference; the host's detection, paste rule and X/Y/Z without the A1111 helpers."""
import logging
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

import float64_reference as ref
from forge_standin.denoiser import CFGDenoiser, ForgeModel
from forge_standin.patcher import KModel, UnetPatcher
from forge_standin.sampling import COND, UNCOND, calc_cond_uncond_batch
from harness.unets import CONTEXT_DIM, sd1_unet
from sag_ext import hosts
from sag_ext.core.capture import middle_block_attention
from sag_ext.core.params import SagParams
from sag_ext.core.perturbed import PerturbedSession
from sag_ext.core.session import SagSession
from sag_ext.hosts import a1111, forge

PARAMS = SagParams(enabled=True, scale=0.8, blur_sigma=2.0, threshold=1.0)
BATCH, CFG = 2, 5.0


def text(rows, tokens=77, seed=0):
    return torch.randn(rows, tokens, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


class ForgeHost:
    """The stand-in Forge with an SD1-layout UNet, and SAG's adapter over it."""

    def __init__(self, max_rows=1 << 30):
        self.unet = sd1_unet()
        self.model = KModel(self.unet, max_rows)
        self.sd_model = ForgeModel(UnetPatcher(self.model))
        self.adapter = forge.ForgeAdapter(SimpleNamespace(shared=SimpleNamespace(sd_model=self.sd_model),
                                                          script_callbacks=None,
                                                          calc_cond_uncond_batch=calc_cond_uncond_batch))
        self.original_patcher = self.sd_model.forge_objects.unet

    def step(self, params=None, x=None, sigma=None, cond_tokens=77, cfg=CFG, builtin_sag=False, cloned_after=False,
             finished=True, sampler_options=None, other_keys=(), in_call=True, unet_wrapper=None, **denoiser_kwargs):
        """One sampling step as the webui runs it (a fresh pass: the patcher rebuilt, then
        process_before_every_sampling), with the methods of `params` (one or a list; None: off);
        `other_keys`: infotext keys other scripts wrote (another PAG on); `cloned_after`: another script
        clones the patcher after ours, as the hosts' built-in guidance does; `finished`: the generation
        ends (else it failed before its end, and its session is never closed); `sampler_options`: the
        model options the sampler passes with each call (a CFG++ sampler's); `in_call`: PAG's and SEG's rows
        may ride in the host's call (the setting); `unet_wrapper`: a UNet function wrapper another Script sets
        on a clone after ours (MultiDiffusion's). Returns (denoised, p)."""
        self.sd_model.forge_objects.unet = self.original_patcher
        p = SimpleNamespace(sd_model=self.sd_model, extra_generation_params={}, is_hr_pass=False, cfg_scale=cfg)
        if builtin_sag:
            p.extra_generation_params["sag_enabled"] = True
        p.extra_generation_params.update(dict(other_keys))
        for each in [] if params is None else params if isinstance(params, list) else [params]:
            if isinstance(each, SagParams):
                SagSession(each).attach_to(p)
            else:
                PerturbedSession.for_generation(p, each.METHOD.key).add(each)
                PerturbedSession.of(p).rows_in_host_call = in_call
        for _ in range(3):  # each of the three Scripts calls it
            self.adapter.before_sampling(p)
        if cloned_after or unet_wrapper is not None:
            self.sd_model.forge_objects.unet = self.sd_model.forge_objects.unet.clone()
        if unet_wrapper is not None:
            self.sd_model.forge_objects.unet.set_model_unet_function_wrapper(unet_wrapper)
        extra_args = {} if sampler_options is None else {"model_options": sampler_options}
        denoiser = CFGDenoiser(p, self.sd_model, total_steps=10, callbacks=[self.adapter.on_cfg_denoiser],
                               sampler=SimpleNamespace(sampler_extra_args=extra_args), **denoiser_kwargs)
        self.model.calls.clear()
        x = torch.randn(BATCH, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 8 if x is None else x
        sigma = torch.full((BATCH,), 8.0) if sigma is None else sigma
        denoised = denoiser.forward(x, sigma, text(BATCH, seed=2), text(BATCH, cond_tokens, seed=1), cfg,
                                    **extra_args)
        for session in (SagSession.of(p), PerturbedSession.of(p)):
            if session is not None and finished:
                session.close()
        return denoised, p


@pytest.fixture
def forge_host():
    return ForgeHost()


def reference_correction(host, x, sigma, params):
    """scale * (x0_d - D(x_d)) in float64 from the host's uncond prediction and the middle attention's
    q and k, recorded by an independent hook on a plain uncond call; the middle block's grid is the
    latent's over 8."""
    uncond = text(BATCH, seed=2)
    _, attn = middle_block_attention(host.unet)
    seen = []
    handle = attn.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    x0_uncond = host.model.apply_model(x, sigma, c_crossattn=uncond, transformer_options={"cond_or_uncond": [UNCOND]})
    handle.remove()
    with torch.no_grad():
        mass = ref.full_softmax_mass(attn.to_q(seen[0]), attn.to_k(seen[0]), attn.heads)

    def model(x_in, s):
        return host.model.apply_model(x_in.float(), s, c_crossattn=uncond, transformer_options={"cond_or_uncond": [COND]})
    grid = (x.shape[-2] // 8, x.shape[-1] // 8)
    return ref.sag_x0_correction(model, x, sigma, x0_uncond, mass, grid, params.threshold, params.blur_sigma,
                                 params.scale)


@pytest.mark.parametrize("layout,max_rows,cond_tokens,calls", [
    ("one call, uncond first", 1 << 30, 77, [(4, [UNCOND, COND])]),
    ("separate calls, uncond first (memory short)", BATCH, 77, [(2, [UNCOND]), (2, [COND])]),
    ("separate calls, cond first (a longer prompt)", 1 << 30, 154, [(2, [COND]), (2, [UNCOND])]),
])
def test_correction_matches_the_float64_reference_in_every_layout(layout, max_rows, cond_tokens, calls):
    host = ForgeHost(max_rows)
    off, _ = host.step(None, cond_tokens=cond_tokens)
    assert host.model.calls == calls
    on, p = host.step(PARAMS, cond_tokens=cond_tokens)
    assert host.model.calls == calls + [(BATCH, [COND])]  # one more pass, over the B uncond rows
    want = reference_correction(host, torch.randn(BATCH, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 8,
                                torch.full((BATCH,), 8.0), PARAMS)
    assert want.abs().max() > 1e-2
    torch.testing.assert_close((on - off).double(), want, atol=1e-4, rtol=0)


def test_off_after_on_is_identical_and_the_patch_stays_on_a_clone(forge_host):
    off, _ = forge_host.step(None)
    on, p = forge_host.step(PARAMS)
    assert (on - off).abs().max() > 1e-3
    assert p.sd_model.forge_objects.unet is not forge_host.original_patcher
    assert "sampler_post_cfg_function" not in forge_host.original_patcher.model_options
    again, _ = forge_host.step(None)
    assert torch.equal(again, off)
    unet = forge_host.unet
    transformer, attn = middle_block_attention(unet)
    assert not (unet._forward_pre_hooks or transformer._forward_pre_hooks or attn.to_q._forward_hooks
                or attn.to_k._forward_hooks)


def test_hooks_left_by_a_failed_generation_go_at_the_next_step(forge_host):
    forge_host.step(PARAMS, finished=False)
    _, attn = middle_block_attention(forge_host.unet)
    assert attn.to_q._forward_hooks
    forge_host.step(None)
    assert not (attn.to_q._forward_hooks or attn.to_k._forward_hooks or forge_host.unet._forward_pre_hooks)


def test_a_clone_after_ours_keeps_our_function_and_session(forge_host):
    """The patchers' clone() deep-copies model_options: SAG's function must come through as itself, still
    correcting with the generation's session (not a copy of it, which no callback arms)."""
    on, _ = forge_host.step(PARAMS)
    cloned, _ = forge_host.step(PARAMS, cloned_after=True)
    torch.testing.assert_close(cloned, on, atol=0, rtol=0)


def test_a_cfg_pp_samplers_own_post_cfg_function_keeps_ours(forge_host):
    """A CFG++ sampler passes model options with its own post-CFG function (it records the uncond x0); the
    host's dict.update would drop SAG's: the correction must be the same as without it, and theirs run too."""
    def cfg_pp_options():
        def record_uncond(args):
            seen.append(args["uncond_denoised"])
            return args["denoised"]
        return {"sampler_post_cfg_function": [record_uncond], "disable_cfg1_optimization": True}

    seen = []
    off, _ = forge_host.step(None, sampler_options=cfg_pp_options())
    on, _ = forge_host.step(PARAMS, sampler_options=cfg_pp_options())
    plain_on, _ = forge_host.step(PARAMS)
    assert len(seen) == 2
    torch.testing.assert_close(on - off, plain_on - off, atol=1e-6, rtol=0)
    assert (on - off).abs().max() > 1e-3


def test_a_pass_at_cfg_1_runs_the_uncond_and_corrects_as_the_reference(forge_host):
    """At CFG 1 Forge runs no uncond chunk unless a post-CFG function disables that optimisation; SAG does,
    as ComfyUI's node and the hosts' built-in SAG: the correction is the reference's (SAG's term does not
    depend on the CFG scale)."""
    off, _ = forge_host.step(None, cfg=1.0)
    assert forge_host.model.calls == [(BATCH, [COND])]
    on, p = forge_host.step(PARAMS, cfg=1.0)
    assert forge_host.model.calls == [(2 * BATCH, [UNCOND, COND]), (BATCH, [COND])]
    want = reference_correction(forge_host, torch.randn(BATCH, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 8,
                                torch.full((BATCH,), 8.0), PARAMS)
    torch.testing.assert_close((on - off).double(), want, atol=1e-4, rtol=0)


def test_skipped_uncond_steps_get_no_correction(forge_host):
    """Skip early CFG and NGMS turn steps of a pass at a higher CFG scale to CFG 1: their uncond stays
    skipped (the user's choice), and SAG, which gets an uncond prediction of zeros there, corrects nothing."""
    off, _ = forge_host.step(None, skip_uncond=lambda step: True)
    on, p = forge_host.step(PARAMS, skip_uncond=lambda step: True)
    assert forge_host.model.calls == [(BATCH, [COND])]
    assert torch.equal(on, off)
    assert SagSession.of(p).changed_nothing("sag")


def test_img2img_correction_stays_in_the_repainted_area(forge_host):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1  # kept from the initial image
    init = torch.randn(BATCH, 4, 32, 32)
    torch.manual_seed(0)
    off, _ = forge_host.step(None, mask=mask, init_latent=init)
    torch.manual_seed(0)
    on, _ = forge_host.step(PARAMS, mask=mask, init_latent=init)
    assert torch.equal(on[..., :16], off[..., :16]) and (on - off)[..., 16:].abs().max() > 1e-3


def test_builtin_sag_on_makes_ours_step_aside(forge_host, caplog):
    off, _ = forge_host.step(None, builtin_sag=True)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        on, p = forge_host.step(PARAMS, builtin_sag=True)
    assert torch.equal(on, off) and forge_host.model.calls == [(2 * BATCH, [UNCOND, COND])]
    assert caplog.text.count("[SAG]") == 1 and "built-in Self-Attention Guidance is on as well" in caplog.text


def test_model_without_middle_transformer_is_unsupported(forge_host):
    forge_host.sd_model.forge_objects.unet.model = SimpleNamespace(diffusion_model=torch.nn.Module())
    assert "no middle-block transformer" in forge_host.adapter.unsupported_reason()


# ---- the host, recognised by what it has --------------------------------------------------------

@pytest.fixture
def forge_sampling_module(monkeypatch):
    """A webui with Forge's sampling module (its `calc_cond_uncond_batch`)."""
    for name in ("backend", "backend.sampling"):
        monkeypatch.setitem(sys.modules, name, ModuleType(name))
    sampling = ModuleType("backend.sampling.sampling_function")
    sampling.calc_cond_uncond_batch = calc_cond_uncond_batch
    monkeypatch.setitem(sys.modules, sampling.__name__, sampling)
    forge.adapter.cache_clear()
    yield
    forge.adapter.cache_clear()


def test_forge_family_is_detected_by_its_sampling_module(forge_sampling_module):
    found = hosts.detect()
    assert isinstance(found, forge.ForgeAdapter) and found.webui.calc_cond_uncond_batch is calc_cond_uncond_batch
    assert not found.reads_forge_infotext


def test_a1111_is_detected_without_it():
    assert isinstance(hosts.detect(), a1111.A1111Adapter)


# ---- UI differences ------------------------------------------------------------------------------

def test_forge_keys_are_left_to_the_builtin_sag_in_forge_hosts(host):
    """The A1111 stand-in's paste routes, with the UI registered as in a Forge host."""
    from modules import infotext_utils
    from sag_ext import ui
    from sag_ext.ui.paste import on_infotext_pasted_own_keys
    from sag_ext.ui.panel import build_ui
    from script_loader import load_script_module

    script = load_script_module().SelfAttentionGuidanceScript()
    ui.register_callbacks(forge_keys=False)
    build_ui(script, forge_keys=False)
    builtin = {"sag_enabled": "True", "sag_scale": "0.6", "sag_blur_sigma": "1.5"}
    for route in (infotext_utils.paste_values, infotext_utils.api_values):
        assert route(script.infotext_fields, dict(builtin)) == [False] + [None] * 7
        assert route(script.infotext_fields, {"SAG Scale": "0.6"})[:2] == [True, 0.6]  # ours still paste
    params = dict(builtin)
    on_infotext_pasted_own_keys("", params)
    assert params["SAG Enabled"] is False


def test_axes_without_the_hosts_boolean_helper():
    """Forge Classic's X/Y/Z module has AxisOption and axis_options but no boolean_choice."""
    import xyz_grid
    from sag_ext.ui import xyz

    classic = SimpleNamespace(axis_options=[], AxisOption=xyz_grid.AxisOption)
    xyz.add_axes(classic)
    assert classic.axis_options[0].label == "[SAG] Enabled" and classic.axis_options[0].choices() == ["False", "True"]
