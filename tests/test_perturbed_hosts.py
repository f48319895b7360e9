"""PAG and SEG through both adapters and the Scripts: the stand-in of the A1111 host (tests/webui_standin)
and of Forge's sampling (tests/forge_standin), against the float64 reference; one pass for both methods,
the generation's lifecycle and the webui experience."""
import json
import logging

import pytest
import torch

import perturbed_reference as ref
from forge_standin.sampling import COND, UNCOND
from harness.diffusion import CompVisDenoiser, sd_alphas_cumprod
from modules import infotext_utils, processing, script_callbacks
from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
from sag_ext import generation
from sag_ext.core.layers import find_layers
from sag_ext.core.params import SagParams, arg_names, parse_script_args
from sag_ext.core.perturbation import PerturbationHooks
from sag_ext.core.perturbed_params import PagParams, SegParams
from sag_ext.hosts import forge, forge_call
from sag_ext.ui import api, xyz
from script_loader import load_script_module
from test_forge_standin import BATCH, ForgeHost, text
from test_host_standin import kd_inputs, make_p, one_step, use_sdxl_like_model

PAG = PagParams(enabled=True, scale=2.0)
SEG = SegParams(enabled=True, scale=2.5, blur_sigma=-1.0, layers="m0,u0.0")
SEG_FINITE = SegParams(enabled=True, scale=2.5, blur_sigma=1.0)


@pytest.fixture
def scripts(host):
    module = load_script_module()
    return {SagParams: module.SelfAttentionGuidanceScript(), PagParams: module.PerturbedAttentionGuidanceScript(),
            SegParams: module.SmoothedEnergyGuidanceScript()}


def args_of(params):
    return [getattr(params, name) for name in arg_names(type(params))]


def generate(scripts, p, *params):
    """A generation with each method of `params` on, through the three Scripts (the others off)."""
    runs = []
    for params_class, script in scripts.items():
        chosen = next((each for each in params if isinstance(each, params_class)), params_class())
        runs.append((script, args_of(chosen)))
    return processing.process_images(p, runs[0][0], runs[0][1], others=runs[1:])


def perturbed_hooks(host):
    return PerturbationHooks.attached(host.sd_model.model.diffusion_model)


def reference_x0(unet, params_list, x, sigma, cond):
    """x0 of the cond rows with each method's change, from the float64 reference model; [plain] + one per method."""
    def denoiser(model):
        return CompVisDenoiser(lambda x_in, t, c: model(x_in, t, context=c), sd_alphas_cumprod().double())

    paths = {id(module): name for name, module in unet.named_modules()}
    models = [ref.perturbed_unet(unet, [], "plain")]
    for params in params_list:
        names = [paths[id(attn)] for _, attn in find_layers(unet, params.layers)]
        kind = "smoothed_query" if isinstance(params, SegParams) else "identity"
        models.append(ref.perturbed_unet(unet, names, kind, getattr(params, "blur_sigma", 0.0)))
    with torch.no_grad():
        return [denoiser(model)(x.double(), sigma.double(), cond.double()) for model in models]


def expected_guidance(unet, params_list, x, sigma, cond):
    """The methods' sum of scale * (x0_c - x0_perturbed) (no rescale: their terms add)."""
    plain, *perturbed = reference_x0(unet, params_list, x, sigma, cond)
    return sum(params.scale * (plain - rows) for params, rows in zip(params_list, perturbed))


# ---- A1111: the image against the reference ----------------------------------------------------------

@pytest.mark.parametrize("methods", [[PAG], [SEG], [SEG_FINITE], [PAG, SEG]], ids=["pag", "seg", "seg_sigma_1", "pag_seg"])
def test_a1111_step_matches_the_float64_reference(host, scripts, methods):
    x, sigma = kd_inputs(2)

    def step(*params):
        runs = [(scripts[type(each)], args_of(each)) for each in params] or [(scripts[PagParams], [False])]
        p = make_p()
        for script, args in runs[1:]:
            script.process(p, *args)
        out = one_step(runs[0][0], p, runs[0][1], x=x, sigma=sigma)  # processes the first and ends it
        for script, args in runs[1:]:
            script.postprocess(p, None, *args)
        return out

    off, on = step(), step(*methods)
    want = expected_guidance(host.sd_model.model.diffusion_model, methods, x, sigma, make_p().cond)
    assert want.abs().max() > 1e-2
    torch.testing.assert_close((on - off).double(), want, atol=2e-4, rtol=0)


def test_a1111_both_sampler_families_agree(host, scripts):
    a = sd_alphas_cumprod()[600]
    x_kd, sigma = kd_inputs(2, 600)
    x0 = {}
    for params in (PagParams(), PAG):
        kd = one_step(scripts[PagParams], make_p(), args_of(params), x=x_kd, sigma=sigma)
        x_t = x_kd * a.sqrt()
        eps = one_step(scripts[PagParams], make_p(), args_of(params), denoiser_class=CFGDenoiserTimesteps, x=x_t,
                       sigma=torch.full((2,), 600.0))
        x0[params.enabled] = kd, (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    for kd, ts in x0.values():
        torch.testing.assert_close(ts, kd, atol=1e-4, rtol=1e-4)
    assert (x0[True][0] - x0[False][0]).abs().max() > 1e-3


@pytest.mark.parametrize("methods,separate,in_call", [([PAG], [4, 2], [6]), ([SEG], [4, 2], [6]),
                                                       ([PAG, SEG], [4, 4], [8]),
                                                       ([SagParams(enabled=True), PAG, SEG], [4, 4, 2], [8, 2])],
                         ids=["pag", "seg", "pag_seg", "sag_pag_seg"])
def test_a1111_pag_and_seg_rows_ride_in_the_webui_call(host, scripts, methods, separate, in_call):
    """One call per step with PAG and SEG (SAG's pass after it), or with the setting off, one pass of their own."""
    p = make_p()
    with_rows = generate(scripts, p, *methods)
    assert host.sd_model.calls == in_call * len(p.timesteps)
    host.sd_model.calls.clear()
    host.opts.pag_in_webui_call = False
    alone = generate(scripts, make_p(), *methods)
    assert host.sd_model.calls == separate * len(p.timesteps)
    torch.testing.assert_close(with_rows, alone, atol=1e-4, rtol=1e-4)  # rounding, over a whole generation


LAYOUTS = {"one_call": {}, "chunked": {"batch_cond_uncond": False}, "padded": {"pad_cond_uncond": True},
           "uncond_call": {}, "skipped_uncond": {"skip_early_cond": 1.0}}


@pytest.mark.parametrize("layout,calls", [("one_call", [8]), ("chunked", [2, 2, 2, 2]), ("padded", [8]),
                                          ("uncond_call", [4, 2, 2]), ("skipped_uncond", [6])])
def test_a1111_rows_in_the_webui_call_in_every_batch_layout(host, scripts, layout, calls):
    """Chunks of B rows, a longer prompt padded or in calls of its own, skipped uncond rows: the rows in the
    webui's call give the separate pass's step."""
    x, sigma = kd_inputs(2)
    cond_tokens = 154 if layout in ("padded", "uncond_call") else 77

    def step(in_call, seg=SEG, pag=PAG):
        host.opts.pag_in_webui_call = in_call
        p = make_p(cond_tokens=cond_tokens)
        scripts[SegParams].process(p, *args_of(seg))
        out = one_step(scripts[PagParams], p, args_of(pag), x=x, sigma=sigma)
        scripts[SegParams].postprocess(p, None, *args_of(seg))
        return out

    for option, value in LAYOUTS[layout].items():
        setattr(host.opts, option, value)
    off = step(True, SegParams(), PagParams())
    separate = step(False)
    host.sd_model.calls.clear()
    with_rows = step(True)
    assert host.sd_model.calls == calls and perturbed_hooks(host) is None
    # float32 sums over other batch splits differ at rounding level; a row from the wrong place by the guidance
    assert (separate - off).abs().max() > 1e-2
    torch.testing.assert_close(with_rows, separate, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_a1111_generation_contract(host, scripts, sampler, caplog):
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        off = generate(scripts, make_p(sampler_name=sampler))
        p = make_p(sampler_name=sampler)
        on = generate(scripts, p, PAG, SEG)
        again = generate(scripts, make_p(sampler_name=sampler), PAG, SEG)
        off_after = generate(scripts, make_p(sampler_name=sampler))
    assert (on - off).abs().max() > 1e-3 and torch.equal(on, again) and torch.equal(off, off_after)
    assert p.infotext == {"PAG Scale": 2.0, "SEG Scale": 2.5, "SEG Blur Sigma": -1.0, "SEG Layers": "m0,u0.0"}
    assert perturbed_hooks(host) is None and not caplog.text and not script_callbacks.reported_errors


def test_a1111_cfg_1_still_guided(host, scripts):
    off = generate(scripts, make_p(cfg_scale=1.0))
    on = generate(scripts, make_p(cfg_scale=1.0), PAG)
    assert (on - off).abs().max() > 1e-3


def test_a1111_sdxl_style_dict_conds(host, scripts):
    dict_p = use_sdxl_like_model(host)
    off = generate(scripts, dict_p())
    on = generate(scripts, dict_p(), PAG, SEG)
    assert (on - off).abs().max() > 1e-3 and perturbed_hooks(host) is None


def test_a1111_img2img_guidance_stays_in_the_repainted_area(host, scripts):
    keep = torch.zeros(1, 1, 32, 32)
    keep[..., :16] = 1

    def masked_p():
        return make_p(init_latent=torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(9)), mask=keep)

    x, sigma = kd_inputs(2)
    off = one_step(scripts[PagParams], masked_p(), [False], x=x, sigma=sigma)
    on = one_step(scripts[PagParams], masked_p(), args_of(PAG), x=x, sigma=sigma)
    change = (on - off).abs()
    assert change[..., :16].max() == 0 and change[..., 16:].max() > 1e-3


def test_a1111_and_prompts_step_aside_with_one_line(host, scripts, caplog):
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        off = generate(scripts, make_p(and_prompt=True))
        on = generate(scripts, make_p(and_prompt=True), PAG)
    assert torch.equal(on, off)
    assert caplog.text.count("[PAG]") == 1 and "AND prompts" in caplog.text


def test_a1111_layers_the_model_lacks_turn_only_that_method_off(host, scripts, caplog):
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        pag_alone = generate(scripts, make_p(), PAG)
        p = make_p()
        both = generate(scripts, p, PAG, SegParams(enabled=True, layers="d7"))
    torch.testing.assert_close(both, pag_alone, atol=1e-5, rtol=0)
    assert caplog.text.count("[SEG]") == 1 and "d7: this model has 2 such blocks" in caplog.text
    assert "[PAG]" not in caplog.text and "SEG Scale" not in p.infotext and "PAG Scale" in p.infotext


def test_a1111_an_error_in_the_pass_steps_aside_for_that_generation(host, scripts, caplog, monkeypatch):
    off = generate(scripts, make_p())
    from sag_ext.core import perturbed

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(perturbed.PerturbedSession, "end_step", broken)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        p = make_p()
        on = generate(scripts, p, PAG, SEG)
    assert torch.equal(on, off) and perturbed_hooks(host) is None
    assert caplog.text.count("[PAG]") == 1 and caplog.text.count("[SEG]") == 1 and "out of memory" in caplog.text
    assert "PAG Scale" not in p.infotext


def test_a1111_rows_that_cannot_be_added_leave_the_step_as_it_was(host, scripts, caplog, monkeypatch):
    """The rows go into the webui's batch all together or not at all: a failure while building them (here the
    conditioning's) leaves x, sigma and image_cond as the webui made them, and the generation runs unguided."""
    off = generate(scripts, make_p())
    from sag_ext.hosts import a1111

    def broken(cond, copies):
        raise TypeError("a conditioning this adapter cannot repeat")

    monkeypatch.setattr(a1111, "_repeat_rows", broken)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        on = generate(scripts, make_p(), PAG, SEG)
    assert torch.equal(on, off) and perturbed_hooks(host) is None
    assert caplog.text.count("[PAG]") == 1 and caplog.text.count("[SEG]") == 1 and "cannot repeat" in caplog.text


@pytest.mark.parametrize("in_call", [True, False], ids=["in_call", "separate"])
def test_a1111_non_finite_pass_gives_the_off_image(host, scripts, caplog, monkeypatch, in_call):
    host.opts.pag_in_webui_call = in_call
    off = generate(scripts, make_p())
    unet = host.sd_model.model.diffusion_model
    original = unet.forward

    def overflowing(x, *args, **kwargs):  # our rows: the call's middle third, or a call of their own
        out = original(x, *args, **kwargs)
        if PerturbationHooks.attached(unet)._changes:
            out[slice(2, 4) if in_call else slice(None)] = float("inf")
        return out

    monkeypatch.setattr(unet, "forward", overflowing)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        on = generate(scripts, make_p(), PAG)
    torch.testing.assert_close(on, off, atol=5e-4, rtol=0)  # the off image, but for rounding in a larger batch
    assert "inf or NaN" in caplog.text and caplog.text.count("[PAG]") == 1


def test_a1111_nothing_changed_is_said_once(host, scripts, caplog):
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        p = make_p()
        generate(scripts, p, PagParams(enabled=True, start=0.9, end=1.0), SegParams(enabled=True, scale=0.0))
    assert caplog.text.count("[PAG]") == 1 and caplog.text.count("[SEG]") == 1
    assert "steps outside start..end" in caplog.text and "the scale is 0" in caplog.text
    assert "PAG Scale" not in p.infotext and "SEG Scale" not in p.infotext


def test_a1111_hires_control(host, scripts):
    p = make_p()
    p.is_hr_pass = True
    off = generate(scripts, p)
    for params, changed in ((PagParams(enabled=True, hires="off"), False), (PagParams(enabled=True, hires="own",
                                                                                      hires_scale=1.0), True)):
        p = make_p()
        p.is_hr_pass = True
        assert (generate(scripts, p, params) - off).abs().max() > 1e-3 if changed else \
            torch.equal(generate(scripts, p, params), off)


# ---- Forge: the image against the reference ------------------------------------------------------------

def forge_expected(host, methods, x, sigma):
    return expected_guidance(host.unet, methods, x, sigma, text(BATCH, seed=1))


def with_our_rows(calls, copies):
    """The host's UNet calls with our `copies` chunks of B rows added to the one holding the cond chunk."""
    return [(rows + copies * BATCH, chunks + [COND] * copies) if COND in chunks else (rows, chunks)
            for rows, chunks in calls]


@pytest.mark.parametrize("in_call", [True, False], ids=["in_call", "separate"])
@pytest.mark.parametrize("methods", [[PAG], [SEG], [PAG, SEG]], ids=["pag", "seg", "pag_seg"])
@pytest.mark.parametrize("max_rows,cond_tokens", [(1 << 30, 77), (BATCH, 77), (1 << 30, 154)],
                         ids=["one_call", "memory_short", "long_prompt"])
def test_forge_step_matches_the_float64_reference(methods, max_rows, cond_tokens, in_call):
    host = ForgeHost(max_rows)
    x = torch.randn(BATCH, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 8
    sigma = torch.full((BATCH,), 8.0)
    off, _ = host.step(None, cond_tokens=cond_tokens)
    calls = list(host.model.calls)
    on, _ = host.step(methods, cond_tokens=cond_tokens, in_call=in_call)
    # in the host's call that holds the cond chunk, or one pass over the cond rows, once per method
    assert host.model.calls == (with_our_rows(calls, len(methods)) if in_call else
                                calls + [(BATCH * len(methods), [COND])])
    if cond_tokens == 77:
        want = forge_expected(host, methods, x, sigma)
        assert want.abs().max() > 1e-2
        torch.testing.assert_close((on - off).double(), want, atol=2e-4, rtol=0)
    else:
        assert (on - off).abs().max() > 1e-2


def test_forge_cfg_1_still_guided():
    host = ForgeHost()
    off, _ = host.step(None, cfg=1.0)
    on, _ = host.step([PAG], cfg=1.0)
    assert host.model.calls == [(2 * BATCH, [COND, COND])]
    x = torch.randn(BATCH, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 8
    torch.testing.assert_close((on - off).double(), forge_expected(host, [PAG], x, torch.full((BATCH,), 8.0)),
                               atol=2e-4, rtol=0)


def another_unet_wrapper(apply_model, args):
    """A neighbour's UNet function wrapper (MultiDiffusion's place): it runs the call its own way."""
    return apply_model(args["input"], args["timestep"], **args["c"])


@pytest.mark.parametrize("when", ["before", "after"])
def test_forge_another_unet_wrapper_gets_the_separate_pass(when):
    """Set before ours, ours stays out; set after, it replaces ours: either way the pass is a call of its own."""
    host = ForgeHost()
    want, _ = host.step([PAG, SEG], in_call=False)
    patcher = host.original_patcher
    if when == "before":
        patcher.model_options["model_function_wrapper"] = another_unet_wrapper
    else:
        original = host.adapter.before_sampling

        def then_theirs(p):
            original(p)
            p.sd_model.forge_objects.unet.model_options["model_function_wrapper"] = another_unet_wrapper
        host.adapter.before_sampling = then_theirs
    got, p = host.step([PAG, SEG])
    assert host.model.calls == [(2 * BATCH, [UNCOND, COND]), (2 * BATCH, [COND])]
    assert p.sd_model.forge_objects.unet.model_options["model_function_wrapper"] is another_unet_wrapper
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_forge_another_extensions_attention_gets_the_separate_pass():
    """An attention replaced by another extension (StyleAlign shares it across each chunk's rows) sees every
    row of the call: our rows stay out of the host's call, without a console line."""
    host = ForgeHost()
    want, _ = host.step([PAG, SEG], in_call=False)
    options = host.original_patcher.model_options["transformer_options"]
    options["patches_replace"] = {"attn1": {("middle", 0, 0): lambda q, k, v, extra_options: None}}
    got, _ = host.step([PAG, SEG])
    assert host.model.calls == [(2 * BATCH, [UNCOND, COND]), (2 * BATCH, [COND])]
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_forge_a_call_that_cannot_carry_our_rows_falls_back_with_one_line(caplog, monkeypatch):
    host = ForgeHost()
    want, _ = host.step([PAG], in_call=False)
    original = host.model.apply_model

    def short_of_memory(x, *args, **kwargs):
        if x.shape[0] > 2 * BATCH:
            raise RuntimeError("CUDA out of memory")
        return original(x, *args, **kwargs)

    monkeypatch.setattr(host.model, "apply_model", short_of_memory)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        got, _ = host.step([PAG])
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert caplog.text.count("[PAG]") == 1 and "out of memory" in caplog.text and "call of their own" in caplog.text


def test_forge_conditioning_of_our_rows():
    """x, the timestep and every per-row input follow the cond chunk (ControlNet's outputs too); the options
    name our chunks."""
    chunks = [UNCOND, COND]
    ramp = torch.arange(4.0)
    c = {"c_crossattn": ramp.view(4, 1, 1).expand(4, 3, 2), "y": ramp.view(4, 1), "control_model": object(),
         "control": {"input": [None, ramp.view(4, 1, 1, 1)], "middle": [ramp.view(4, 1)], "output": []},
         "transformer_options": {"cond_or_uncond": chunks, "sigmas": torch.ones(2), "cond_mark": torch.tensor([1., 1, 0, 0]),
                                 "cond_indices": [2, 3], "uncond_indices": [0, 1], "patches": {}}}
    got_x, got_timestep, got = forge_call.with_chunks_repeated(ramp, ramp, c, chunks, COND, 2)
    want_rows = torch.tensor([0., 1, 2, 3, 2, 3, 2, 3])
    assert torch.equal(got_x, want_rows) and torch.equal(got_timestep, want_rows)
    assert torch.equal(got["c_crossattn"][:, 0, 0], want_rows) and torch.equal(got["y"][:, 0], want_rows)
    assert torch.equal(got["control"]["input"][1].flatten(), want_rows) and got["control"]["input"][0] is None
    assert torch.equal(got["control"]["middle"][0].flatten(), want_rows) and got["control_model"] is c["control_model"]
    options = got["transformer_options"]
    assert options["cond_or_uncond"] == [UNCOND, COND, COND, COND] and torch.equal(options["sigmas"], torch.ones(2))
    assert options["cond_mark"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0] and options["cond_indices"] == [2, 3, 4, 5, 6, 7]
    assert options["uncond_indices"] == [0, 1] and c["transformer_options"]["cond_or_uncond"] == chunks
    with pytest.raises(forge.CannotCarry):
        forge_call.with_chunks_repeated(ramp, ramp, {**c, "y": torch.zeros(1, 3)}, chunks, COND, 2)
    carried = forge_call.with_chunks_repeated(ramp, ramp, c, chunks, UNCOND, 1)[2]["transformer_options"]  # SAG's
    assert carried["cond_or_uncond"] == [UNCOND, COND, UNCOND] and carried["cond_mark"].tolist() == [1, 1, 0, 0, 1, 1]
    assert carried["uncond_indices"] == [0, 1, 4, 5] and carried["cond_indices"] == [2, 3]


@pytest.mark.parametrize("key,stepping_aside", [("pagi_enabled", "PAG"), ("pag_enabled", "PAG"), ("seg_enabled", "SEG")])
def test_forge_another_pag_or_seg_on_makes_ours_step_aside(key, stepping_aside, caplog):
    host = ForgeHost()
    alone = {"PAG": [SEG], "SEG": [PAG]}[stepping_aside]
    want, _ = host.step(alone)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        got, _ = host.step([PAG, SEG], other_keys={key: True})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert caplog.text.count("[") == 1 and f"[{stepping_aside}]" in caplog.text and "is on as well" in caplog.text


def test_forge_all_three_methods_add_one_function_each_and_leave_nothing():
    host = ForgeHost()
    on, p = host.step([SagParams(enabled=True), PAG, SEG])
    functions = p.sd_model.forge_objects.unet.model_options["sampler_post_cfg_function"]
    assert len(functions) == 2
    assert host.model.calls == [(8, [UNCOND, COND, COND, COND]), (BATCH, [COND])]  # SAG's pass: the uncond as cond
    assert PerturbationHooks.attached(host.unet) is None
    assert not {"sampler_post_cfg_function", "model_function_wrapper"} & set(host.original_patcher.model_options)
    separate, _ = host.step([SagParams(enabled=True), PAG, SEG], in_call=False)
    torch.testing.assert_close(on, separate, atol=1e-4, rtol=0)


def test_forge_cfg_pp_samplers_keep_our_function():
    host = ForgeHost()
    plain, _ = host.step([PAG])
    theirs = [lambda args: args["denoised"]]
    kept, _ = host.step([PAG], sampler_options={"sampler_post_cfg_function": theirs})
    torch.testing.assert_close(kept, plain, atol=0, rtol=0)


# ---- the webui experience ----------------------------------------------------------------------------

@pytest.mark.parametrize("route", [infotext_utils.paste_values, infotext_utils.api_values])
@pytest.mark.parametrize("params", [PAG, PagParams(enabled=True, scale=4.5, start=0.1, end=0.8, layers="m0,u0.4",
                                                   rescale=0.5, rescale_mode="partial", hires="own", hires_scale=1.5),
                                    SEG, SegParams(enabled=True, blur_sigma=10.0, rescale=0.7)])
def test_infotext_round_trip(scripts, route, params):
    script = scripts[type(params)]
    script.ui(False)
    written = {key: str(value) for key, value in params.infotext(has_hires_pass=True).items()}
    pasted = route(script.infotext_fields, dict(written))
    assert parse_script_args(pasted, defaults=type(params)())[0] == params


@pytest.mark.parametrize("infotext,want", [
    ({"pagi_enabled": "True", "pagi_scale": "4.5", "pagi_attenuation": "0", "pagi_start_step": "0.2",
      "pagi_end_step": "0.9"}, PagParams(enabled=True, scale=4.5, start=0.2, end=0.9)),  # Forge's built-in PAG
    ({"pag_enabled": "True", "pag_scale": "2.5", "pag_rescale": "0.3", "pag_rescale_mode": "partial", "pag_block": "output",
      "pag_block_id": "1", "pag_block_list": ""}, PagParams(enabled=True, scale=2.5, rescale=0.3, rescale_mode="partial",
                                                             layers="u1")),  # pamparamm's
    ({"seg_enabled": "True", "seg_scale": "3", "seg_blur_sigma": "10", "seg_block_list": "m0,u0.4"},
     SegParams(enabled=True, scale=3.0, blur_sigma=10.0, layers="m0,u0.4")),
])
def test_other_implementations_keys_paste_in_a1111(scripts, infotext, want):
    script = scripts[type(want)]
    script.ui(False)
    pasted = infotext_utils.paste_values(script.infotext_fields, dict(infotext))
    assert parse_script_args(pasted, defaults=type(want)())[0] == want


def test_other_implementations_keys_stay_theirs_in_forge_hosts(scripts):
    from sag_ext import ui
    from sag_ext.ui.panel import build_ui

    ui.register_callbacks(forge_keys=False)
    script = scripts[PagParams]
    build_ui(script, PagParams, forge_keys=False)
    pasted = infotext_utils.paste_values(script.infotext_fields, {"pagi_enabled": "True", "pagi_scale": "4.5"})
    assert pasted[0] is False and all(value is None for value in pasted[1:])


@pytest.mark.parametrize("title,args,message", [
    ("Perturbed-Attention Guidance", [{"layers": "x9"}], "layers: 'x9' is not a block"),
    ("Perturbed-Attention Guidance", [{"rescale_mode": "half"}], "rescale_mode must be one of full, partial, snf"),
    ("Perturbed-Attention Guidance", [{"scale": 31}], "scale must be within 0.0..30.0"),
    ("Smoothed Energy Guidance", [{"blur_sigma": "inf"}], "blur_sigma must be a number"),
    ("smoothed energy guidance", [{"layer": "m0"}], "unknown key 'layer'"),
])
def test_bad_api_arguments_are_named(title, args, message):
    body = json.dumps({"alwayson_scripts": {title: {"args": args}}}).encode()
    error = api.request_error(body)
    assert error is not None and message in error and error.startswith(f"alwayson_scripts[{title!r}]")


def test_dict_arguments_reach_the_generation(host, scripts):
    p = make_p()
    scripts[SegParams].process(p, {"blur_sigma": -5, "layers": "m0, u0.0"})
    assert api.request_error(json.dumps({"alwayson_scripts": {"smoothed energy guidance": {
        "args": [{"blur_sigma": -5}]}}}).encode()) is None
    assert p._perturbed_session.methods["seg"] == SegParams(enabled=True, blur_sigma=-1.0, layers="m0,u0.0")
    scripts[SegParams].postprocess(p, None)


def test_xyz_layers_axis(host):
    import xyz_grid

    xyz.add_axes(xyz_grid)
    options = {option.label: option for option in xyz_grid.axis_options}
    p = make_p()
    options["[PAG] Layers"].apply(p, "m0,u0.4", ["m0", "m0,u0.4"])
    params, _ = generation.generation_params(p, [False], PagParams)
    assert (params.enabled, params.layers) == (True, "m0,u0.4")
    xyz_grid.axis_options[:] = xyz_grid.axis_options[:1]


def test_settings_defaults_reach_the_panel(host, scripts):
    host.opts.pag_default_scale, host.opts.seg_default_layers = 5.0, "u0"
    assert scripts[PagParams].ui(False)[1].value == 5.0
    assert next(control.value for control in scripts[SegParams].ui(False) if control.label == "SEG layers") == "u0"


class IncantationsStandIn:
    """What sd-webui-incantations' PAG does to a generation that matters here: before sampling it writes
    `PAG Active` and its own `PAG Scale` (our key's name) into the infotext (it guides in hooks of its own,
    left out here)."""

    def process(self, p, *args):
        p.extra_generation_params.update({"PAG Active": True, "PAG Scale": 5.0})

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass


def test_a1111_incantations_pag_on_too_makes_ours_step_aside_and_keeps_its_keys(host, scripts, caplog):
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        off = generate(scripts, make_p())
        p = make_p()
        on = processing.process_images(p, scripts[PagParams], args_of(PAG), others=[(IncantationsStandIn(), [])])
    assert torch.equal(on, off)
    assert caplog.text.count("[PAG]") == 1 and "sd-webui-incantations is on as well" in caplog.text
    assert p.infotext["PAG Scale"] == 5.0 and p.infotext["PAG Active"] is True  # theirs, left alone


class IncantationsSegStandIn(IncantationsStandIn):
    """sd-webui-incantations' SEG: `SEG Active` in the infotext before sampling; its hook on the middle block's
    `to_q` blurs the query of the second half of the rows of every UNet call of a step."""

    def process(self, p, *args):
        p.extra_generation_params.update({"SEG Active": True, "SEG Blur Sigma": 11.0})


def test_a1111_incantations_seg_on_makes_every_method_step_aside(host, scripts, caplog):
    """Its query blur would act on SAG's pass and PAG's rows too: each of ours steps aside with one line."""
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        off = generate(scripts, make_p())
        p = make_p()
        runs = [(script, args_of(params)) for script, params in zip(scripts.values(), (SagParams(enabled=True), PAG, SEG))]
        on = processing.process_images(p, *runs[0], others=runs[1:] + [(IncantationsSegStandIn(), [])])
    assert torch.equal(on, off)
    assert [caplog.text.count(f"[{tag}]") for tag in ("SAG", "PAG", "SEG")] == [1, 1, 1]
    assert caplog.text.count("sd-webui-incantations is on as well") == 3
    assert "SAG Scale" not in p.infotext and p.infotext["SEG Blur Sigma"] == 11.0


def test_xyz_attributes_are_not_incantations(host):
    """sd-webui-incantations' axes set `pag_scale`, `seg_blur_sigma`, ... on the cell's object: ours differ."""
    import xyz_grid

    xyz.add_axes(xyz_grid)
    options = {option.label: option for option in xyz_grid.axis_options}
    p = make_p()
    options["[PAG] Scale"].apply(p, 2.0, [2.0])
    options["[SEG] Blur sigma"].apply(p, 4.0, [4.0])
    assert not any(hasattr(p, name) for name in ("pag_scale", "pag_enabled", "seg_blur_sigma", "seg_enabled"))
    p.pag_scale, p.seg_blur_sigma = 9.0, 9.0  # incantations' cell values
    assert generation.generation_params(p, [False], PagParams)[0].scale == 2.0
    assert generation.generation_params(p, [False], SegParams)[0].blur_sigma == 4.0
    xyz_grid.axis_options[:] = xyz_grid.axis_options[:1]
