"""Stable Diffusion's noise schedule and k-diffusion's denoiser around an eps-predicting model."""
import torch


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's scaled-linear schedule: alphas_cumprod of its 1000 timesteps (float32)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


class CompVisDenoiser:
    """k-diffusion's CompVisDenoiser: x0 = x - sigma * eps(x * c_in, t(sigma)), c_in = 1 / sqrt(sigma^2 + 1).

    `apply_model(x, t, cond)` is the eps model (ldm's `LatentDiffusion.apply_model` signature); `t(sigma)` is
    the timestep whose sigma is nearest in log space.
    """

    def __init__(self, apply_model, alphas_cumprod: torch.Tensor):
        self.apply_model = apply_model
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return (self.sigmas.log()[None, :] - sigma.log()[:, None]).abs().argmin(dim=1)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        """As a torch module's call: the instance's `forward`, which another extension may replace (Tiled Diffusion)."""
        return self.forward(*args, **kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        c_in = (sigma ** 2 + 1).rsqrt().view(-1, 1, 1, 1)
        eps = self.apply_model(x * c_in, self.sigma_to_t(sigma), cond)
        return x - sigma.view(-1, 1, 1, 1) * eps
