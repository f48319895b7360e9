"""The mask preview: where SAG blurred the image, accumulated over the steps and shown in red over it."""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TINT = np.array([255.0, 32.0, 32.0])
MAX_OPACITY = 0.6


def overlay(image: Image.Image, share: torch.Tensor) -> Image.Image:
    """`image` tinted red with opacity proportional to `share` (H, W latent grid, 0..1)."""
    size = (image.height, image.width)
    mask = F.interpolate(share[None, None].float(), size=size, mode="nearest")[0, 0].numpy()[..., None]
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    blended = rgb * (1 - MAX_OPACITY * mask) + TINT * (MAX_OPACITY * mask)
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


class BlurredShare:
    """Per latent pixel, the share of a pass's SAG steps in which it was blurred; summed on the device."""

    def __init__(self):
        self.total: Optional[torch.Tensor] = None  # the masks of the current pass, summed
        self.steps = 0

    def add(self, mask: torch.Tensor) -> None:
        """One step's boolean (B, 1, H, W) mask; a mask of another size starts a new pass (hires fix)."""
        if self.total is None or self.total.shape != mask.shape:
            self.total, self.steps = torch.zeros(mask.shape, device=mask.device), 0
        self.total += mask
        self.steps += 1

    def take(self) -> Optional[torch.Tensor]:
        """(B, H, W) in [0, 1] of the last pass, on the CPU, or None before any step; the next batch starts anew."""
        if self.total is None:
            return None
        share = (self.total[:, 0] / self.steps).float().cpu()
        self.total = None
        return share
