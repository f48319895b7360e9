"""Stand-in of the k-diffusion family: the inner model returns x0, takes sigmas; Euler sampling."""
import torch

from harness.diffusion import CompVisDenoiser
from modules import shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.sd_samplers_common import launch_sampling


class CFGDenoiserKDiffusion(CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            # the model's apply_model looked up at each call, as k-diffusion's `inner_model.apply_model`
            self.model_wrap = CompVisDenoiser(lambda *args: shared.sd_model.apply_model(*args),
                                              shared.sd_model.alphas_cumprod)
        return self.model_wrap


def sample_euler(p, noise, timesteps, extra_args):
    """Euler over the model's own discrete sigmas at `timesteps` (descending), ending at sigma 0."""
    denoiser = CFGDenoiserKDiffusion(p, total_steps=len(timesteps))
    p.denoiser = denoiser
    sigmas = torch.cat([denoiser.inner_model.sigmas[timesteps], torch.zeros(1)])
    if getattr(p, "init_latent", None) is not None:
        denoiser.init_latent, denoiser.mask, denoiser.nmask = p.init_latent, p.mask, 1 - p.mask
    x = noise * sigmas[0]
    if denoiser.init_latent is not None:
        x = denoiser.init_latent + x

    def loop():
        nonlocal x
        for i in range(len(timesteps)):
            shared.state.sampling_step = i
            sigma = sigmas[i].repeat(x.shape[0])
            denoised = denoiser(x, sigma, **extra_args)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            denoiser.last_latent = x
        return x

    return launch_sampling(loop, denoiser, x)
