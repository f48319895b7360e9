"""SAG through the adapter and the Script, on the stand-in of the webui host (tests/webui_standin)."""
import logging

import pytest
import torch

from script_loader import load_script_module
from modules import processing, script_callbacks, sd_unet, shared
from modules.sd_samplers_kdiffusion import CFGDenoiserKDiffusion
from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
from sag_ext.core.capture import middle_block_attention
from harness.unets import CONTEXT_DIM

ON = [True, 0.8, 2.0, 1.0]
OFF = [False, 0.8, 2.0, 1.0]


@pytest.fixture
def script(host):
    return load_script_module().SelfAttentionGuidanceScript()


def text(rows, tokens=77, seed=0):
    return torch.randn(rows, tokens, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


def make_p(batch=2, and_prompt=False, cond_tokens=77, **kwargs):
    conds_list, row = [], 0
    for image in range(batch):
        parts = 2 if and_prompt and image == 0 else 1
        conds_list.append([(row + k, 0.6 if parts == 2 and k == 0 else (0.4 if parts == 2 else 1.0)) for k in range(parts)])
        row += parts
    cond = text(row, cond_tokens, seed=1)
    if and_prompt:  # the AND rows reuse the single-prompt rows' texts so that layouts stay comparable
        cond = torch.cat([cond[:1], text(1, cond_tokens, seed=3), cond[1:row - 1]])
    return processing.Processing(conds_list, cond, text(batch, 77, seed=2), **kwargs)


def hooks_on(host):
    """Hooks on the UNet, its middle transformer and that transformer's attn1 (SAG's capture sets 4)."""
    unet = host.sd_model.model.diffusion_model
    transformer, attn = middle_block_attention(unet)
    return sum(len(hooks) for hooks in (unet._forward_pre_hooks, transformer._forward_pre_hooks, attn._forward_hooks,
                                        attn.to_q._forward_hooks, attn.to_k._forward_hooks))


def one_step(script, p, args, denoiser_class=CFGDenoiserKDiffusion, x=None, sigma=None):
    """One CFG denoiser call at a fixed x and noise level, inside process/postprocess."""
    script.process(p, *args)
    denoiser = denoiser_class(p, total_steps=10)
    if p.init_latent is not None:
        denoiser.init_latent, denoiser.mask, denoiser.nmask = p.init_latent, p.mask, 1 - p.mask
    image_cond = torch.zeros(p.batch_size, 5, 1, 1)
    out = denoiser(x, sigma, cond=(p.conds_list, p.cond), uncond=p.uncond, cond_scale=p.cfg_scale,
                   s_min_uncond=0.0, image_cond=image_cond)
    script.postprocess(p, None, *args)
    return out


def kd_inputs(batch, t=600):
    from harness.diffusion import sd_alphas_cumprod

    a = sd_alphas_cumprod()[t]
    sigma = ((1 - a) / a).sqrt()
    x = torch.randn(batch, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * (1 + sigma ** 2).sqrt()
    return x, sigma.repeat(batch)


def correction(script, p_factory, **step_kwargs):
    """SAG's contribution to one denoiser call: output with SAG on minus output with it off."""
    return one_step(script, p_factory(), ON, **step_kwargs) - one_step(script, p_factory(), OFF, **step_kwargs)


# ---- the image -------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_on_changes_the_image_and_off_after_on_is_identical(host, script, sampler):
    off_before = processing.process_images(make_p(sampler_name=sampler), script, OFF)
    on = processing.process_images(make_p(sampler_name=sampler), script, ON)
    on_again = processing.process_images(make_p(sampler_name=sampler), script, ON)
    off_after = processing.process_images(make_p(sampler_name=sampler), script, OFF)
    assert torch.isfinite(on).all()
    assert (on - off_before).abs().max() > 1e-3
    assert torch.equal(on, on_again)
    assert torch.equal(off_before, off_after)
    assert hooks_on(host) == 0
    assert not script_callbacks.reported_errors


def test_works_under_the_hosts_autocast(host, script, caplog):
    """The webui samples under autocast (fp16 on CUDA): SAG's arithmetic must not mix dtypes."""
    with torch.autocast("cpu", dtype=torch.bfloat16), caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        off = processing.process_images(make_p(), script, OFF)
        on = processing.process_images(make_p(), script, ON)
    assert "[SAG]" not in caplog.text
    assert (on - off).abs().max() > 1e-3


def test_one_degraded_pass_of_uncond_rows_per_step(host, script):
    p = make_p(batch=3)
    processing.process_images(p, script, ON)
    calls = host.sd_model.calls
    assert calls == [6, 3] * len(p.timesteps)  # the CFG call over 2B rows, then one pass over the B uncond rows


# ---- batch layouts -----------------------------------------------------------------------------

def test_every_host_layout_gives_the_single_call_correction(host, script):
    x, sigma = kd_inputs(3)
    reference = correction(script, lambda: make_p(batch=3), x=x, sigma=sigma)
    assert reference.abs().max() > 1e-3

    host.opts.batch_cond_uncond = False  # chunked UNet calls of B rows
    chunked = correction(script, lambda: make_p(batch=3), x=x, sigma=sigma)
    chunked_and = correction(script, lambda: make_p(batch=3, and_prompt=True), x=x, sigma=sigma)  # chunk edges inside the uncond block
    host.opts.batch_cond_uncond = True
    and_prompt = correction(script, lambda: make_p(batch=3, and_prompt=True), x=x, sigma=sigma)
    long_prompt = correction(script, lambda: make_p(batch=3, cond_tokens=154), x=x, sigma=sigma)  # separate uncond call
    for name, got in dict(chunked=chunked, chunked_and=chunked_and, and_prompt=and_prompt, long_prompt=long_prompt).items():
        # float32 sums over other batch splits differ by up to ~2e-5 here (5e-6 of the correction's size, seen on
        # x86 CPUs); a row taken from the wrong place is off by the correction's size itself
        torch.testing.assert_close(got, reference, atol=1e-4, rtol=0, msg=name)


def test_padded_uncond_is_used_for_the_degraded_pass(host, script):
    x, sigma = kd_inputs(2)
    empty = host.sd_model.cond_stage_model_empty_prompt

    def explicitly_padded():
        p = make_p(cond_tokens=154)
        p.uncond = torch.cat([p.uncond, empty.repeat(2, 1, 1)], dim=1)
        return p

    reference = correction(script, explicitly_padded, x=x, sigma=sigma)
    host.opts.pad_cond_uncond = True
    padded = correction(script, lambda: make_p(cond_tokens=154), x=x, sigma=sigma)
    torch.testing.assert_close(padded, reference, atol=2e-5, rtol=0)


def test_both_sampler_families_agree(host, script):
    """The same state as x0 (k-diffusion) and as eps (timesteps) gives the same guided x0."""
    from harness.diffusion import sd_alphas_cumprod

    t = 600
    a = sd_alphas_cumprod()[t]
    x_kd, sigma = kd_inputs(2, t)
    x0_kd = {args[0]: one_step(script, make_p(), args, x=x_kd, sigma=sigma) for args in (ON, OFF)}
    x_t, timesteps = x_kd * a.sqrt(), torch.full((2,), float(t))
    x0_ts = {}
    for args in (ON, OFF):
        eps = one_step(script, make_p(), args, denoiser_class=CFGDenoiserTimesteps, x=x_t, sigma=timesteps)
        x0_ts[args[0]] = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    torch.testing.assert_close(x0_ts[False], x0_kd[False], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_ts[True], x0_kd[True], atol=1e-4, rtol=1e-4)
    assert (x0_kd[True] - x0_kd[False]).abs().max() > 1e-3


def use_sdxl_like_model(host):
    """An SDXL-like UNet in the stand-in host; returns a maker of generations with SDXL's dict conds."""
    from standin_model import StandInSDModel
    from harness.unets import sdxl_like_unet

    host.sd_model = StandInSDModel(sdxl_like_unet(), CONTEXT_DIM)

    def dict_p():
        p = make_p()
        p.cond = {"crossattn": p.cond, "vector": torch.zeros(2, 8)}
        p.uncond = {"crossattn": p.uncond, "vector": torch.zeros(2, 8)}
        return p
    return dict_p


def test_sdxl_style_dict_conds(host, script):
    dict_p = use_sdxl_like_model(host)
    off = processing.process_images(dict_p(), script, OFF)
    on = processing.process_images(dict_p(), script, ON)
    assert (on - off).abs().max() > 1e-3 and hooks_on(host) == 0


# ---- steps and areas SAG leaves alone ----------------------------------------------------------

def test_steps_without_uncond_get_no_correction(host, script):
    host.opts.skip_early_cond = 1.0  # every step skips the uncond rows
    off = processing.process_images(make_p(), script, OFF)
    host.sd_model.calls.clear()
    p = make_p()
    on = processing.process_images(p, script, ON)
    assert torch.equal(on, off)
    assert host.sd_model.calls == [2] * len(p.timesteps)  # the cond rows only, and no degraded pass


def test_ngms_skips_only_the_steps_it_skips(host, script):
    p = make_p(s_min_uncond=100.0, timesteps=(999, 749, 499, 249))  # odd steps skip the uncond
    processing.process_images(p, script, ON)
    assert host.sd_model.calls == [4, 2, 2, 4, 2, 2]


def test_img2img_correction_stays_in_the_repainted_area(host, script):
    x, sigma = kd_inputs(2)
    keep = torch.zeros(1, 1, 32, 32)
    keep[..., :16] = 1

    def masked_p():
        return make_p(init_latent=torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(9)), mask=keep)

    got = correction(script, masked_p, x=x, sigma=sigma)
    assert got[..., :16].abs().max() == 0
    assert got[..., 16:].abs().max() > 1e-3


@pytest.mark.parametrize("args", [[True, 0.8, 0.0, 1.0], [True, 0.0, 2.0, 1.0]])
def test_zero_blur_or_zero_scale_is_the_off_image(host, script, args, caplog):
    off = processing.process_images(make_p(), script, OFF)
    p = make_p()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        assert torch.equal(processing.process_images(p, script, args), off)
    assert "SAG Scale" not in p.infotext and "is 0" in caplog.text


def test_tiny_latent_is_skipped(host, script):
    from standin_model import StandInSDModel
    from harness.unets import sdxl_like_unet

    host.sd_model = StandInSDModel(sdxl_like_unet(), CONTEXT_DIM)
    off = processing.process_images(make_p(latent_size=(4, 8)), script, OFF)
    assert torch.equal(processing.process_images(make_p(latent_size=(4, 8)), script, ON), off)


def test_one_by_one_middle_grid_runs_no_pass_and_claims_nothing(host, script, caplog):
    """SD1 at 64 px: the middle block's single token gets exactly the average attention, so the mask is
    empty at every step; no pass runs, the image is the SAG-off image and the infotext says nothing."""
    off = processing.process_images(make_p(latent_size=(8, 8)), script, OFF)
    host.sd_model.calls.clear()
    p = make_p(latent_size=(8, 8))
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        on = processing.process_images(p, script, ON)
    assert torch.equal(on, off)
    assert host.sd_model.calls == [4] * len(p.timesteps)  # the CFG batch only
    assert "SAG Scale" not in p.infotext
    assert caplog.text.count("[SAG]") == 1 and "changed nothing in this generation: no latent position" in caplog.text


def test_a_threshold_above_every_position_changes_nothing_and_claims_nothing(host, script, caplog):
    """The mask is empty at every step (decided on the device, so the passes run): the correction is zero,
    the image the SAG-off image, and the infotext says nothing."""
    off = processing.process_images(make_p(), script, OFF)
    host.sd_model.calls.clear()
    p = make_p()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        on = processing.process_images(p, script, ON[:3] + [4.0])
    assert torch.equal(on, off) and host.sd_model.calls.count(2) == len(p.timesteps)
    assert "SAG Scale" not in p.infotext
    assert caplog.text.count("[SAG]") == 1 and "changed nothing in this generation: no latent position" in caplog.text


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_sampling_steps_read_nothing_back_from_the_device(host, script, sampler, monkeypatch):
    """A read (bool, item, ...) inside a step would make the host wait for the GPU's queue every step."""
    from sag_ext.core.capture import MiddleBlockCapture
    from sag_ext.core.session import SagSession

    inside, reads = [], []
    for owner, name in ((SagSession, "begin_step"), (SagSession, "end_step"), (SagSession, "apply"),
                        (MiddleBlockCapture, "_record")):
        def traced(*args, _original=getattr(owner, name), **kwargs):
            inside.append(True)
            try:
                return _original(*args, **kwargs)
            finally:
                inside.pop()
        monkeypatch.setattr(owner, name, traced)
    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "numpy"):
        def read(tensor, *args, _name=name, _original=getattr(torch.Tensor, name), **kwargs):
            if inside:
                reads.append(_name)
            return _original(tensor, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)
    off = processing.process_images(make_p(sampler_name=sampler), script, OFF)
    on = processing.process_images(make_p(sampler_name=sampler), script, ON)
    assert reads == [] and not torch.equal(on, off)


def test_a_generation_with_corrections_says_nothing_more(host, script, caplog):
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        p = make_p()
        processing.process_images(p, script, ON)
    assert caplog.text == "" and p.infotext["SAG Scale"] == ON[1]


# ---- models SAG cannot hook ----------------------------------------------------------------------

def test_alternative_unet_turns_sag_off(host, script, caplog):
    off = processing.process_images(make_p(), script, OFF)
    sd_unet.current_unet = object()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        p = make_p()
        on = processing.process_images(p, script, ON)
    assert torch.equal(on, off)
    assert "alternative UNet" in caplog.text and "SAG Scale" not in p.extra_generation_params


def test_model_without_middle_transformer_turns_sag_off(host, script, caplog):
    unet = host.sd_model.model.diffusion_model
    unet.middle_block = type(unet.middle_block)(unet.middle_block[0], unet.middle_block[2])  # like SSD-1B
    off = processing.process_images(make_p(), script, OFF)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        on = processing.process_images(make_p(), script, ON)
    assert torch.equal(on, off) and "no middle-block transformer" in caplog.text


def test_edit_model_turns_sag_off(host, script, caplog):
    host.sd_model.cond_stage_key = "edit"
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        processing.process_images(make_p(), script, ON)
    assert "instruct-pix2pix" in caplog.text
    assert host.sd_model.calls.count(2) == 0


def test_webui_without_the_denoiser_in_cfg_params_is_told_clearly(host, script, caplog, monkeypatch):
    """webui 1.6 and 1.7 lack CFGDenoiserParams.denoiser: SAG says so and stays off."""
    from dataclasses import make_dataclass

    old_params = make_dataclass("CFGDenoiserParams", ["x", "image_cond", "sigma", "sampling_step", "total_sampling_steps",
                                                      "text_cond", "text_uncond"])
    monkeypatch.setattr(script_callbacks, "CFGDenoiserParams", old_params)
    p = make_p()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        script.process(p, *ON)
    assert "needs webui 1.8 or newer" in caplog.text
    assert getattr(p, "_sag_session", None) is None and "SAG Scale" not in p.extra_generation_params


class QuadrantTiles:
    """A tiler SAG does not know (as Tiled Diffusion's DemoFusion), in place of the k-diffusion denoiser: the
    step's rows run as tiles of the latent, each tile with all N rows of the call, tile after tile in one
    call, and the outputs are put back over the latent (here four quadrants, which do not overlap)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x, sigma, cond):
        n, (height, width) = x.shape[0], x.shape[-2:]
        boxes = [(slice(top, top + height // 2), slice(left, left + width // 2))
                 for top in (0, height // 2) for left in (0, width // 2)]
        tiles = torch.cat([x[:, :, rows, cols] for rows, cols in boxes])
        tiled_cond = {key: [value[0].repeat(len(boxes), *([1] * (value[0].ndim - 1)))] for key, value in cond.items()}
        out = self.inner(tiles, sigma.repeat(len(boxes)), cond=tiled_cond)
        whole = torch.empty_like(x)
        for index, (rows, cols) in enumerate(boxes):
            whole[:, :, rows, cols] = out[index * n:(index + 1) * n]
        return whole


def test_tiles_of_the_latent_make_sag_step_aside(host, script, caplog):
    """The middle block of a tile has the tile's grid: SAG's mask would be the first tile's, stretched over the
    image. SAG steps aside with one line, the step as without it."""
    x, sigma = kd_inputs(2)

    def tiled_step(args):
        p = make_p()
        script.process(p, *args)
        denoiser = CFGDenoiserKDiffusion(p, total_steps=10)
        denoiser.model_wrap = QuadrantTiles(denoiser.inner_model)
        out = denoiser(x, sigma, cond=(p.conds_list, p.cond), uncond=p.uncond, cond_scale=p.cfg_scale,
                       s_min_uncond=0.0, image_cond=torch.zeros(2, 5, 1, 1))
        script.postprocess(p, None, *args)
        return out

    off = tiled_step(OFF)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        on = tiled_step(ON)
    assert torch.equal(on, off)
    assert [record.getMessage() for record in caplog.records] == [
        "[SAG] Self-Attention Guidance is off for this generation: UnsupportedAttention: the model ran on a 16x16 "
        "tile of the 32x32 latent (Tiled Diffusion?): SAG's mask needs the middle-block attention of the whole image"]


# ---- SAG per tile inside Tiled Diffusion (tests/webui_standin/tiled_diffusion.py) ----------------------

TILED = dict(height=32, width=32, tile=16, overlap=8, batch=4)  # 3 x 3 tiles in calls of 4, 4 and 1


def tiled_step(script, args, tiler, denoiser_class=CFGDenoiserKDiffusion, x=None, sigma=None, p=None):
    """One denoiser call with `tiler` hooked as Tiled Diffusion hooks itself, inside process/postprocess."""
    p = p or make_p()
    script.process(p, *args)
    denoiser = denoiser_class(p, total_steps=10)
    from tiled_diffusion import MixtureOfDiffusers
    if isinstance(tiler, MixtureOfDiffusers):
        tiler.hook(shared.sd_model)
    else:
        tiler.hook(denoiser)
    try:
        out = denoiser(x, sigma, cond=(p.conds_list, p.cond), uncond=p.uncond, cond_scale=p.cfg_scale,
                       s_min_uncond=0.0, image_cond=torch.zeros(x.shape[0], 5, 1, 1))
    finally:
        if isinstance(tiler, MixtureOfDiffusers):
            tiler.unhook(shared.sd_model)
    script.postprocess(p, None, *args)
    return out, p


def reference_tile_correction(host, x, sigma, uncond):
    """The float64 reference of SAG (k-diffusion form) on one tile as on an image of its own: the uncond
    prediction and the middle attention's q and k from a plain uncond call, recorded by a hook of its own."""
    import float64_reference as ref
    from harness.diffusion import CompVisDenoiser

    denoiser = CompVisDenoiser(host.sd_model.apply_model, host.sd_model.alphas_cumprod)
    cond = {"c_crossattn": [uncond], "c_concat": [torch.zeros(x.shape[0], 5, 1, 1)]}
    _, attn = middle_block_attention(host.sd_model.model.diffusion_model)
    seen = []
    handle = attn.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    x0_uncond = denoiser(x, sigma, cond=cond)
    handle.remove()
    with torch.no_grad():
        mass = ref.full_softmax_mass(attn.to_q(seen[0]), attn.to_k(seen[0]), attn.heads)
    grid = (x.shape[-2] // 8, x.shape[-1] // 8)
    return ref.sag_x0_correction(lambda x_in, s: denoiser(x_in.float(), s, cond=cond), x, sigma, x0_uncond, mass,
                                 grid, threshold=ON[3], blur_sigma=ON[2], scale=ON[1])


@pytest.mark.parametrize("method", ["MultiDiffusion", "MixtureOfDiffusers"])
def test_sag_per_tile_matches_the_float64_reference_of_each_tile_blended(host, script, method):
    """Inside Tiled Diffusion SAG guides every tile as an image of its own, and the tiles' corrections blend as
    their predictions do; the UNet never runs the rows that carry them."""
    import tiled_diffusion

    def tiler():
        return getattr(tiled_diffusion, method)(**TILED)

    x, sigma = kd_inputs(2)
    off_tiles, on_tiles = tiler(), tiler()
    off, _ = tiled_step(script, OFF, off_tiles, x=x, sigma=sigma)
    unet_rows = []
    handle = host.sd_model.model.diffusion_model.register_forward_hook(
        lambda module, args, output: unet_rows.append(output.shape[0]))
    on, p = tiled_step(script, ON, on_tiles, x=x, sigma=sigma)
    handle.remove()
    assert off_tiles.calls == [16, 16, 4]  # 4 + 4 + 1 tiles of 4 rows (cond, uncond)
    assert on_tiles.calls == [24, 24, 6]  # and the 2 carried rows of each tile
    assert unet_rows == [16, 8, 16, 8, 4, 2]  # the UNet: the tiles' own rows, then SAG's pass over their uncond
    assert "SAG Scale" in p.extra_generation_params
    uncond = make_p().uncond
    total, weights = torch.zeros(x.shape, dtype=torch.float64), torch.zeros(x.shape, dtype=torch.float64)
    for bboxes in on_tiles.batched_bboxes:
        for box in bboxes:
            total[box] += reference_tile_correction(host, x[box].contiguous(), sigma, uncond) * on_tiles.tile_weights
            weights[box] += on_tiles.tile_weights
    want = total / weights
    assert want.abs().max() > 1e-2
    torch.testing.assert_close((on - off).double(), want, atol=1e-4, rtol=0)


def test_sag_in_one_tile_over_the_image_is_sag_without_tiles(host, script):
    """With one tile covering the latent, SAG inside Tiled Diffusion is SAG without it (the same equation,
    made inside the UNet call in the model's eps), in both sampler families."""
    import tiled_diffusion
    from harness.diffusion import sd_alphas_cumprod

    x, sigma = kd_inputs(2)
    whole = dict(TILED, tile=32)
    plain = one_step(script, make_p(), ON, x=x, sigma=sigma)
    tiled, _ = tiled_step(script, ON, tiled_diffusion.MultiDiffusion(**whole), x=x, sigma=sigma)
    assert (plain - one_step(script, make_p(), OFF, x=x, sigma=sigma)).abs().max() > 1e-2
    torch.testing.assert_close(tiled, plain, atol=2e-5, rtol=0)
    a = sd_alphas_cumprod()[600]
    x_t, t = x * a.sqrt(), torch.full((2,), 600.0)
    plain = one_step(script, make_p(), ON, denoiser_class=CFGDenoiserTimesteps, x=x_t, sigma=t)
    tiled, _ = tiled_step(script, ON, tiled_diffusion.MultiDiffusion(**whole), denoiser_class=CFGDenoiserTimesteps,
                          x=x_t, sigma=t)
    torch.testing.assert_close(tiled, plain, atol=2e-5, rtol=0)


def test_tiled_diffusion_leaves_no_hooks_and_steps_aside_where_it_cannot_carry(host, script, caplog):
    import tiled_diffusion

    x, sigma = kd_inputs(2)
    before = hooks_on(host)
    tiled_step(script, ON, tiled_diffusion.MultiDiffusion(**TILED), x=x, sigma=sigma)
    assert hooks_on(host) == before
    host.opts.batch_cond_uncond = False
    off, _ = tiled_step(script, OFF, tiled_diffusion.MultiDiffusion(**TILED), x=x, sigma=sigma)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        aside, _ = tiled_step(script, ON, tiled_diffusion.MultiDiffusion(**TILED), x=x, sigma=sigma)
    host.opts.batch_cond_uncond = True
    assert torch.equal(aside, off)
    assert [record.getMessage() for record in caplog.records] == [
        "[SAG] Self-Attention Guidance is off for this generation: Tiled Diffusion with the setting \"Batch "
        "cond/uncond\" off"]


def test_carried_rows_that_cannot_be_added_leave_the_tiled_step_as_it_was(host, script, caplog, monkeypatch):
    """The carried rows go into the step's batch all together or not at all: a failure while building them (here
    the conditioning's) leaves the step as the webui made it, and SAG steps aside with one line."""
    import tiled_diffusion
    from sag_ext.hosts import a1111

    def broken(cond, change):
        raise TypeError("a conditioning this adapter cannot extend")

    x, sigma = kd_inputs(2)
    off, _ = tiled_step(script, OFF, tiled_diffusion.MultiDiffusion(**TILED), x=x, sigma=sigma)
    monkeypatch.setattr(a1111, "_map_cond", broken)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        aside, _ = tiled_step(script, ON, tiled_diffusion.MultiDiffusion(**TILED), x=x, sigma=sigma)
    assert torch.equal(aside, off)
    assert len(caplog.records) == 1 and "cannot extend" in caplog.records[0].getMessage()


def test_a_tile_call_that_fails_leaves_no_hooks_once_the_next_generation_starts(host, script):
    """An error inside a tiled UNet call (out of memory, say) ends the generation before the step's end: the
    step's hooks stay until the next generation (or an unload) releases them with every stale hook."""
    import tiled_diffusion
    from sag_ext.hosts.tiled_diffusion import SagInTiledDiffusion

    class MultiDiffusion(tiled_diffusion.MultiDiffusion):
        def kdiff_forward(self, x_in, sigma_in, cond):
            raise RuntimeError("out of memory")

    unet = host.sd_model.model.diffusion_model
    before = hooks_on(host)
    x, sigma = kd_inputs(2)
    with pytest.raises(RuntimeError, match="out of memory"):
        tiled_step(script, ON, MultiDiffusion(**TILED), x=x, sigma=sigma)
    assert SagInTiledDiffusion.attached(unet) is not None
    script.process(make_p(), *OFF)
    assert SagInTiledDiffusion.attached(unet) is None and hooks_on(host) == before
    assert not unet._forward_hooks
