"""Stand-in of the timestep family (DDIM, PLMS, UniPC): the inner model returns eps, takes integer timesteps."""
import torch

from modules import shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.sd_samplers_common import launch_sampling


class CompVisTimestepsDenoiser:
    def __init__(self, sd_model):
        self.sd_model = sd_model

    def __call__(self, *args, **kwargs):
        """As a torch module's call: the instance's `forward`, which another extension may replace."""
        return self.forward(*args, **kwargs)

    def forward(self, x, t, cond):
        return self.sd_model.apply_model(x, t, cond)


class CFGDenoiserTimesteps(CFGDenoiser):
    mask_before_denoising = True

    def __init__(self, p, total_steps):
        super().__init__(p, total_steps)
        self.alphas = shared.sd_model.alphas_cumprod

    def get_pred_x0(self, x_in, x_out, sigma):
        a = self.alphas[sigma.long()].view(-1, 1, 1, 1)
        return (x_in - (1 - a).sqrt() * x_out) / a.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


def sample_ddim(p, noise, timesteps, extra_args):
    """Deterministic DDIM over `timesteps` (descending integers)."""
    denoiser = CFGDenoiserTimesteps(p, total_steps=len(timesteps))
    p.denoiser = denoiser
    alphas = denoiser.alphas
    x = noise

    def loop():
        nonlocal x
        for i, t in enumerate(timesteps):
            shared.state.sampling_step = i
            t_in = torch.full((x.shape[0],), float(t))
            eps = denoiser(x, t_in, **extra_args)
            x0 = denoiser.get_pred_x0(x, eps, t_in)
            a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            denoiser.last_latent = x
        return x

    return launch_sampling(loop, denoiser, x)
