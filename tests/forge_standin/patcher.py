"""Stand-in of Forge's UNet patcher (`sd_model.forge_objects.unet`) and its KModel."""
import copy

import torch

from harness.diffusion import CompVisDenoiser, sd_alphas_cumprod


class KModel:
    """`diffusion_model` and `apply_model(x, sigma, c_concat, c_crossattn, control, transformer_options)` -> x0
    (k-diffusion's CompVis scaling); `max_rows` stands in for the free memory that decides how many chunks
    share a call."""

    def __init__(self, unet, max_rows=1 << 30):
        self.diffusion_model, self.max_rows = unet, max_rows
        self.calls = []  # (rows, cond_or_uncond) of each UNet call

    def apply_model(self, x, sigma, c_concat=None, c_crossattn=None, control=None, transformer_options=None):
        self.calls.append((x.shape[0], list(transformer_options["cond_or_uncond"])))

        def eps(x_in, t, _):
            with torch.no_grad():
                return self.diffusion_model(x_in, t, context=c_crossattn, transformer_options=transformer_options)
        return CompVisDenoiser(eps, sd_alphas_cumprod())(x, sigma, None)


class UnetPatcher:
    def __init__(self, model: KModel, model_options=None):
        self.model, self.model_options = model, model_options or {"transformer_options": {}}

    def clone(self):
        return UnetPatcher(self.model, copy.deepcopy(self.model_options))  # the model itself is shared

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options["sampler_post_cfg_function"] = (self.model_options.get("sampler_post_cfg_function", [])
                                                           + [post_cfg_function])
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True
