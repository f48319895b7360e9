"""Stand-in of the webui's loaded model (ldm LatentDiffusion) around a real ldm UNet."""
from types import SimpleNamespace

import torch

from harness.diffusion import sd_alphas_cumprod


class StandInSDModel:
    """`apply_model(x, t, cond)` as DiffusionWrapper does it: crossattn (tensor or SDXL-style dict) and c_concat."""

    cond_stage_key = "txt"
    parameterization = "eps"

    def __init__(self, unet, context_dim, conditioning_key="crossattn"):
        self.model = SimpleNamespace(diffusion_model=unet, conditioning_key=conditioning_key)
        self.alphas_cumprod = sd_alphas_cumprod()
        self.cond_stage_model_empty_prompt = torch.randn(1, 77, context_dim, generator=torch.Generator().manual_seed(7))
        self.calls = []

    def apply_model(self, x, t, cond):
        self.calls.append(x.shape[0])
        if self.model.conditioning_key == "hybrid":
            x = torch.cat([x] + cond["c_concat"], dim=1)
        context = cond["crossattn"] if "crossattn" in cond else torch.cat(cond["c_crossattn"], dim=1)
        with torch.no_grad():
            return self.model.diffusion_model(x, t, context=context)
