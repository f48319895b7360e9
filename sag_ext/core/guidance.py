"""The SAG equation on plain tensors: attention mask, blur, re-noising and the correction.

Self-Attention Guidance (Hong et al., "Improving Sample Quality of Diffusion Models Using
Self-Attention Guidance", ICCV 2023), in the form of ComfyUI's `SelfAttentionGuidance` node
(`comfy_extras/nodes_sag.py`). Per sampling step, for the B negative-prompt ("uncond") rows x at noise
level sigma, with D the model's prediction:

    x0_u  = D(x; sigma, c_uncond)                    the host's own uncond prediction
    A     = mean_heads sum_queries softmax(q k^T)    attention each middle-block key receives (capture.py)
    M     = upsample(A > threshold)                  attention_mask
    x0_d  = M * blur(x0_u) + (1 - M) * x0_u          degrade: 9-tap gaussian where M is set
    x_d   = renoise(x0_d)                            the degraded x0 with the uncond's own noise
    out  += scale * correction(x0_d, D(x_d; sigma, c_uncond))

In the two spaces the webui's samplers work in:

    k-diffusion (X0Space), x = x0 + sigma * eps:   x_d = x0_d + (x - x0_u)
                                                   denoised += scale * (x0_d - D_x0(x_d))
    timestep samplers (EpsSpace), a = alphas_cumprod[t], x = sqrt(a) * x0 + sqrt(1 - a) * eps:
                                                   x_d = x + sqrt(a) * (x0_d - x0_u)
                                                   eps += scale * (eps_u - D_eps(x_d))

The two corrections are the same update: x0 = (x - sqrt(1 - a) * eps) / sqrt(a) turns either into the
other. `degraded_input` computes the lines up to x_d, the host runs D once more, and the space's
`correction` and `guided` finish the equation.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLUR_TAPS = 9
MIN_LATENT_SIDE = 5  # reflect padding of the 9-tap blur needs more than 4 rows and columns


def attention_mask(mass: torch.Tensor, grid: tuple, latent_size: tuple, threshold: float) -> torch.Tensor:
    """Where SAG degrades the image: True where a key token receives more attention than `threshold`.

    `mass` is (B, h*w): per key, the mean over heads of the attention summed over queries.
    Returns a boolean (B, 1, H, W) mask at latent size, nearest-upsampled from the middle-block grid (h, w).
    """
    h, w = grid
    return F.interpolate(mass.reshape(-1, 1, h, w), size=tuple(latent_size), mode="nearest") > threshold


def mask_empty_by_construction(grid: tuple, threshold: float) -> bool:
    """A one-token grid (SD1 at 64 px): its key gets all of its one query's attention, exactly 1, so no
    threshold of 1 or more marks it. Known without reading the mass."""
    return grid[0] * grid[1] == 1 and threshold >= 1.0


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


class GaussianBlur:
    """9-tap gaussian blur of (B, C, H, W) tensors with reflect padding; sigma <= 0 is the identity.

    One depthwise convolution with the outer product of the 1-D kernel; the weights are made once per
    device, dtype and channel count and kept, so a sampling step launches just the padding and the
    convolution.
    """

    def __init__(self, sigma: float):
        self.sigma = sigma
        self._weights = {}

    def weight(self, channels: int, device, dtype) -> torch.Tensor:
        key = (channels, device, dtype)
        if key not in self._weights:
            kernel = gaussian_kernel(self.sigma, device=device, dtype=torch.float32)
            square = (kernel[:, None] * kernel[None, :]).to(dtype)
            self._weights[key] = square.expand(channels, 1, BLUR_TAPS, BLUR_TAPS).contiguous()
        return self._weights[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return x
        pad = BLUR_TAPS // 2
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        out = F.conv2d(padded, self.weight(x.shape[1], x.device, x.dtype), groups=x.shape[1])
        # A depthwise weight (C, 1, 9, 9) is channels-last as much as contiguous, and cuDNN may answer in
        # channels-last: kept so, the layout would spread through SAG's pass and the sampler's latent into
        # every later UNet call (slower kernels there). The result takes x's layout.
        return out if out.stride() == x.stride() else torch.empty_like(x).copy_(out)


def degrade(x0: torch.Tensor, mask: torch.Tensor, blur: GaussianBlur) -> torch.Tensor:
    """x0_d: `x0` blurred where the boolean `mask` is True and kept where it is False."""
    return torch.where(mask, blur(x0), x0)


def degraded_input(space, x: torch.Tensor, out_uncond: torch.Tensor, noise_level: torch.Tensor, mask: torch.Tensor,
                   blur: GaussianBlur) -> tuple:
    """(x0_d, x_d): the degraded uncond prediction and the input of the model's second pass over it.

    `out_uncond` is the model's output for the uncond rows `x` in `space`; `noise_level` is sigma
    (X0Space) or the timestep (EpsSpace).
    """
    x0_uncond = space.pred_x0(x, out_uncond, noise_level)
    x0_degraded = degrade(x0_uncond, mask, blur)
    return x0_degraded, space.renoise(x, x0_uncond, x0_degraded, noise_level)


def guided(combined: torch.Tensor, correction: torch.Tensor, scale: float) -> torch.Tensor:
    """The last line of the equation: the CFG result plus `scale` times the correction."""
    return torch.add(combined, correction.to(combined.dtype), alpha=scale)


@dataclass(frozen=True)
class X0Space:
    """k-diffusion denoisers: the model returns x0 and the input is x_t = x0 + sigma * eps."""

    def pred_x0(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return out

    def output_from_x0(self, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0

    def renoise(self, x: torch.Tensor, x0: torch.Tensor, degraded: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The degraded x0 with the uncond's own noise: degraded + (x - x0)."""
        return x + (degraded - x0)

    def correction(self, x0_degraded: torch.Tensor, out_uncond: torch.Tensor, out_pass: torch.Tensor) -> torch.Tensor:
        """x0_d - D_x0(x_d), unscaled."""
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

    def output_from_x0(self, x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps = (x - sqrt(a) * x0) / sqrt(1 - a): the inverse of pred_x0."""
        a = self._alpha(t, x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    def renoise(self, x: torch.Tensor, x0: torch.Tensor, degraded: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sqrt(a) * degraded + sqrt(1 - a) * eps_uncond, written as a shift of x."""
        return x + self._alpha(t, x).sqrt() * (degraded - x0)

    def correction(self, x0_degraded: torch.Tensor, out_uncond: torch.Tensor, out_pass: torch.Tensor) -> torch.Tensor:
        """eps_u - D_eps(x_d), unscaled: the same update as X0Space's, expressed in eps."""
        return out_uncond - out_pass


@dataclass(frozen=True)
class EpsSpaceOfAlphas(EpsSpace):
    """EpsSpace inside a UNet call, where the noise level given is a = alphas_cumprod itself, one per row (a
    k-diffusion sampler's UNet gets x_t = x / sqrt(1 + sigma^2) and a fractional timestep, which the table
    has no row for: a = 1 / (1 + sigma^2))."""

    alphas_cumprod: None = None

    def _alpha(self, a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return a.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def latent_too_small(latent_size: tuple) -> bool:
    return min(latent_size) < MIN_LATENT_SIDE
