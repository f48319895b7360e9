"""The SAG math on plain tensors: attention mask, blur, re-noising and the correction.

Two output spaces exist in the webui: k-diffusion samplers get the denoised x0 from the model
(`X0Space`), the timestep samplers (DDIM, PLMS, UniPC, DDIM CFG++) get eps (`EpsSpace`).
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLUR_TAPS = 9
MIN_LATENT_SIDE = 5  # reflect padding of the 9-tap blur needs more than 4 rows and columns


def attention_mask(mass: torch.Tensor, grid: tuple, latent_size: tuple, threshold: float) -> torch.Tensor:
    """Where SAG degrades the image: 1 where a key token receives more attention than `threshold`.

    `mass` is (B, h*w): per key, the mean over heads of the attention summed over queries.
    Returns a (B, 1, H, W) mask at latent size, upsampled nearest from the middle-block grid (h, w).
    """
    h, w = grid
    mask = (mass.reshape(-1, 1, h, w) > threshold).to(mass.dtype)
    return F.interpolate(mask, size=tuple(latent_size), mode="nearest")


def autocast_off(device: torch.device):
    """A context without autocast, so SAG's own arithmetic keeps its tensors' dtypes (the webui samples under autocast)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def gaussian_kernel(sigma: float, device=None, dtype=torch.float32, taps: int = BLUR_TAPS) -> torch.Tensor:
    """Normalised 1-D gaussian of `taps` samples, made on `device` (no host-device copy, no sync)."""
    half = (taps - 1) / 2 / sigma
    pdf = torch.linspace(-half, half, taps, device=device, dtype=torch.float32).square_().mul_(-0.5).exp_()
    return pdf.div_(pdf.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable 9-tap gaussian blur of a (B, C, H, W) tensor with reflect padding; sigma <= 0 is identity."""
    if sigma <= 0:
        return x
    channels = x.shape[1]
    kernel = gaussian_kernel(sigma, device=x.device, dtype=x.dtype)
    pad = BLUR_TAPS // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, BLUR_TAPS), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, BLUR_TAPS, 1), groups=channels)


def degrade(x0: torch.Tensor, mask: torch.Tensor, blur_sigma: float) -> torch.Tensor:
    """Blur `x0` where `mask` is 1, keep it where the mask is 0."""
    return torch.lerp(x0, gaussian_blur(x0, blur_sigma), mask.to(x0.dtype))


@dataclass(frozen=True)
class X0Space:
    """k-diffusion denoisers: the model returns x0 and the input is x_t = x0 + sigma * eps."""

    def pred_x0(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return out

    def renoise(self, x: torch.Tensor, x0: torch.Tensor, degraded: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The degraded x0 with the uncond's own noise: degraded + (x - x0)."""
        return x + (degraded - x0)

    def correction(self, x0_degraded: torch.Tensor, out_uncond: torch.Tensor, out_pass: torch.Tensor, x: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
        """(degraded - prediction of the degraded pass), unscaled, in x0 space."""
        return x0_degraded - out_pass


@dataclass(frozen=True)
class EpsSpace:
    """Timestep denoisers: the model returns eps and x_t = sqrt(a) * x0 + sqrt(1 - a) * eps, a = alphas_cumprod[t]."""

    alphas_cumprod: torch.Tensor

    def _alpha(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas_cumprod.to(like.device)
        return alphas[t.long()].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def pred_x0(self, x: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._alpha(t, x)
        return (x - (1 - a).sqrt() * out) / a.sqrt()

    def renoise(self, x: torch.Tensor, x0: torch.Tensor, degraded: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sqrt(a) * degraded + sqrt(1 - a) * eps_uncond, written as a shift of x."""
        return x + self._alpha(t, x).sqrt() * (degraded - x0)

    def correction(self, x0_degraded: torch.Tensor, out_uncond: torch.Tensor, out_pass: torch.Tensor, x: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """eps_uncond - eps of the degraded pass: the same update as X0Space's, expressed in eps."""
        return out_uncond - out_pass


def latent_too_small(latent_size: tuple) -> bool:
    return min(latent_size) < MIN_LATENT_SIDE
