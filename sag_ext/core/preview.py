"""The mask preview: where SAG blurred the image, shown in red over it."""
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
