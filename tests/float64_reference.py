"""An independent float64 reference of SAG, written from the algorithm's description with plain loops
and index arithmetic (no conv, no interpolate), for checking sag_ext on small tensors."""
import math

import torch


def attention_mass(attn_probs: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, N) probabilities -> (B, N): mean over heads of the sum over queries."""
    return attn_probs.double().sum(dim=2).mean(dim=1)


def full_softmax_mass(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Mass from (B, N, heads*d) q and k through the whole (B, heads, N, N) softmax, in float64."""
    b, n, inner = q.shape
    d = inner // heads
    q = q.double().reshape(b, n, heads, d).transpose(1, 2)
    k = k.double().reshape(b, n, heads, d).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return attention_mass(probs)


def mask(mass: torch.Tensor, grid, latent, threshold: float) -> torch.Tensor:
    """(B, 1, H, W): 1 where the grid cell that latent pixel (i, j) falls in has mass > threshold."""
    h, w = grid
    big_h, big_w = latent
    cells = (mass.double() > threshold).double().reshape(-1, h, w)
    out = torch.zeros(cells.shape[0], 1, big_h, big_w, dtype=torch.float64)
    for i in range(big_h):
        for j in range(big_w):
            out[:, 0, i, j] = cells[:, (i * h) // big_h, (j * w) // big_w]
    return out


def blur(x: torch.Tensor, sigma: float, taps: int = 9) -> torch.Tensor:
    """Full 2-D gaussian (outer product of a normalised 1-D one) with reflect padding, by direct sums."""
    x = x.double()
    if sigma == 0:
        return x.clone()
    half = taps // 2
    weights = [math.exp(-0.5 * ((t - half) / sigma) ** 2) for t in range(taps)]
    total = sum(weights)
    weights = [w / total for w in weights]

    def reflect(index, size):
        if index < 0:
            return -index
        if index >= size:
            return 2 * (size - 1) - index
        return index

    height, width = x.shape[-2:]
    out = torch.zeros_like(x)
    for a in range(taps):
        rows = [reflect(i + a - half, height) for i in range(height)]
        for b in range(taps):
            cols = [reflect(j + b - half, width) for j in range(width)]
            out += weights[a] * weights[b] * x[..., rows, :][..., cols]
    return out


def degraded(x0: torch.Tensor, mass, grid, threshold: float, sigma: float) -> torch.Tensor:
    m = mask(mass, grid, tuple(x0.shape[-2:]), threshold)
    return blur(x0, sigma) * m + x0.double() * (1 - m)


def sag_x0_correction(model, x, sigma, x0_uncond, mass, grid, threshold, blur_sigma, scale):
    """k-diffusion form: scale * (degraded - model_x0(degraded + x - x0_uncond))."""
    deg = degraded(x0_uncond, mass, grid, threshold, blur_sigma)
    return scale * (deg - model(deg + x.double() - x0_uncond.double(), sigma).double())
