"""The SAG math (sag_ext.core.guidance) against the float64 reference and against diffusers' SAG code."""
import pytest
import torch
import torch.nn.functional as F

import float64_reference as ref
from sag_ext.core.guidance import EpsSpace, GaussianBlur, X0Space, attention_mask, degrade, latent_too_small

torch.manual_seed(0)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("size", [(5, 5), (8, 8), (65, 47), (13, 30)])
def test_blur_matches_reference(sigma, size):
    x = torch.randn(2, 4, *size)
    got = GaussianBlur(sigma)(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref.blur(x, sigma), atol=1e-5, rtol=0)


def test_blur_keeps_the_input_layout_whatever_the_convolution_answers(monkeypatch):
    """cuDNN may return a depthwise convolution in channels-last (its weight is ambiguous): the blur, and
    so SAG's pass and the latent it corrects, keep the host's layout."""
    convolve = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *args, **kwargs: convolve(*args, **kwargs).contiguous(
        memory_format=torch.channels_last))
    x = torch.randn(2, 4, 16, 16)
    blurred = GaussianBlur(2.0)(x)
    assert blurred.is_contiguous()
    torch.testing.assert_close(blurred.double(), ref.blur(x, 2.0), atol=1e-5, rtol=0)


def test_blur_sigma_zero_is_identity():
    x = torch.randn(1, 4, 9, 9)
    assert torch.equal(GaussianBlur(0.0)(x), x)


@pytest.mark.parametrize("grid,latent", [((8, 8), (64, 64)), ((9, 6), (65, 47)), ((3, 2), (5, 5)), ((16, 12), (64, 48))])
@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.3])
def test_mask_matches_reference(grid, latent, threshold):
    n = grid[0] * grid[1]
    mass = torch.rand(3, n) * 2
    got = attention_mask(mass, grid, latent, threshold)
    assert got.shape == (3, 1, *latent)
    assert torch.equal(got.double(), ref.mask(mass, grid, latent, threshold))


def test_mass_of_uniform_attention_is_one_so_nothing_is_masked():
    mass = ref.attention_mass(torch.full((1, 8, 16, 16), 1 / 16))
    torch.testing.assert_close(mass, torch.ones(1, 16, dtype=torch.float64))
    assert attention_mask(mass.float(), (4, 4), (8, 8), 1.0).sum() == 0


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_degrade_matches_reference_on_odd_latent(sigma):
    x0 = torch.randn(2, 4, 65, 47)
    mass = torch.rand(2, 9 * 6) * 2
    got = degrade(x0, attention_mask(mass, (9, 6), (65, 47), 1.0), GaussianBlur(sigma))
    torch.testing.assert_close(got.double(), ref.degraded(x0, mass, (9, 6), 1.0, sigma), atol=1e-5, rtol=0)


def test_latent_size_guard():
    assert latent_too_small((4, 64)) and latent_too_small((64, 4))
    assert not latent_too_small((5, 5))


def test_x0_space_correction_matches_reference():
    def model(x, sigma):  # any fixed map stands in for "the model's x0" here
        return torch.tanh(x) * 0.7 + 0.1 * sigma

    x, x0 = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    sigma = torch.tensor([1.5, 1.5]).view(-1, 1, 1, 1)
    mass = torch.rand(2, 16) * 2
    space = X0Space()
    deg = degrade(x0, attention_mask(mass, (4, 4), (16, 16), 1.0), GaussianBlur(2.0))
    out_pass = model(space.renoise(x, x0, deg, sigma), sigma)
    got = 0.5 * space.correction(deg, x0, out_pass)
    want = ref.sag_x0_correction(model, x, sigma, x0, mass, (4, 4), 1.0, 2.0, 0.5)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_eps_space_is_the_x0_update_written_in_eps():
    """Adding the eps correction to eps moves x0 exactly by the X0Space correction."""
    alphas = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    t = torch.tensor([700, 700])
    space = EpsSpace(alphas)
    a = alphas[t].view(-1, 1, 1, 1)
    x0, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(space.pred_x0(x, eps, t), x0)
    degraded_x0 = x0 + torch.randn_like(x0) * 0.1
    x_deg = space.renoise(x, x0, degraded_x0, t)
    torch.testing.assert_close(x_deg, a.sqrt() * degraded_x0 + (1 - a).sqrt() * eps)  # re-noised with the uncond's eps
    eps_pass = torch.randn_like(eps)
    x0_pass = space.pred_x0(x_deg, eps_pass, t)
    eps_corrected = eps + space.correction(degraded_x0, eps, eps_pass)
    x0_shift = space.pred_x0(x, eps_corrected, t) - x0
    torch.testing.assert_close(x0_shift, X0Space().correction(degraded_x0, None, x0_pass))


# ---- against diffusers' StableDiffusionSAGPipeline ----------------------------------------------

diffusers_sag = pytest.importorskip("diffusers.pipelines.stable_diffusion_sag.pipeline_stable_diffusion_sag")


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_blur_matches_diffusers(sigma):
    x = torch.randn(2, 4, 37, 29)
    torch.testing.assert_close(GaussianBlur(sigma)(x), diffusers_sag.gaussian_blur_2d(x, 9, sigma), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("heads,grid,latent", [(8, (8, 8), (64, 64)), (20, (6, 5), (24, 20))])
def test_masking_and_renoise_match_diffusers_sag_masking(heads, grid, latent):
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler()
    stand_in = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(attention_head_dim=heads)), scheduler=scheduler)
    b, n = 2, grid[0] * grid[1]
    attn_map = torch.softmax(torch.randn(b * heads, n, n) * 3, dim=-1)
    x0, eps = torch.randn(b, 4, *latent), torch.randn(b, 4, *latent)
    t = torch.tensor(500)
    want = diffusers_sag.StableDiffusionSAGPipeline.sag_masking(stand_in, x0, attn_map, grid, t, eps)

    mass = attn_map.reshape(b, heads, n, n).mean(1).sum(1)
    space = EpsSpace(scheduler.alphas_cumprod)
    timesteps = t.repeat(b)
    x = scheduler.add_noise(x0, eps, timesteps)
    got = space.renoise(x, x0, degrade(x0, attention_mask(mass, grid, latent, 1.0), GaussianBlur(1.0)), timesteps)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

