"""Stand-in of Forge's CFGDenoiser.forward (modules/sd_samplers_cfg_denoiser.py) and its sd_model."""
from types import SimpleNamespace

import torch

from .sampling import sampling_function_inner


class ForgeModel:
    """`sd_model` as the Forge hosts have it: the patchers in `forge_objects`, no `.model`."""

    def __init__(self, patcher):
        self.forge_objects = SimpleNamespace(unet=patcher)


class CFGDenoiser:
    """One denoiser per sampling pass. `callbacks` lists the `cfg_denoiser` callbacks; `skip_uncond(step)`
    stands in for Skip early CFG / NGMS, which Forge turns into CFG 1."""

    def __init__(self, p, sd_model, total_steps, callbacks=(), mask=None, init_latent=None, skip_uncond=None,
                 sampler=None):
        self.p, self.total_steps, self.callbacks = p, total_steps, list(callbacks)
        self.sampler = sampler  # holds `sampler_extra_args`, the keyword arguments the sampler calls forward with
        self.inner_model = SimpleNamespace(inner_model=sd_model)
        self.mask, self.nmask = mask, None if mask is None else 1 - mask
        self.init_latent, self.skip_uncond = init_latent, skip_uncond
        self.step = 0

    def forward(self, x, sigma, text_uncond, text_cond, cond_scale, image_cond=None, **kwargs):
        if self.mask is not None:
            x = x * self.nmask + (self.init_latent + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)) * self.mask
        params = SimpleNamespace(x=x, image_cond=image_cond, sigma=sigma, sampling_step=self.step,
                                 total_sampling_steps=self.total_steps, text_cond=text_cond, text_uncond=text_uncond,
                                 denoiser=self)
        for callback in self.callbacks:
            callback(params)
        if self.skip_uncond is not None and self.skip_uncond(self.step):
            cond_scale = 1.0
        patcher = self.inner_model.inner_model.forge_objects.unet
        uncond = [{"crossattn": params.text_uncond}]
        cond = [{"crossattn": params.text_cond}]
        model_options = {**patcher.model_options, **kwargs.get("model_options", {})}  # Neo, reForge: dict.update
        denoised = sampling_function_inner(patcher.model, params.x, params.sigma, uncond, cond, cond_scale,
                                           model_options)
        if self.mask is not None:
            denoised = denoised * self.nmask + self.init_latent * self.mask
        self.step += 1
        return denoised
