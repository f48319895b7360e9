"""Stand-in of modules.processing: a generation object and process_images as an AlwaysVisible script sees them.

Like the host, `postprocess` runs only when sampling returns; an exception skips it.
"""
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from modules import sd_samplers_kdiffusion, sd_samplers_timesteps

SAMPLERS = {"Euler": sd_samplers_kdiffusion.sample_euler, "DDIM": sd_samplers_timesteps.sample_ddim}


@dataclass
class Processing:
    conds_list: list  # per image: [(row of cond, weight), ...]
    cond: Any  # all cond rows
    uncond: Any  # one row per image
    sampler_name: str = "Euler"
    timesteps: tuple = (999, 749, 499, 249)
    cfg_scale: float = 7.0
    s_min_uncond: float = 0.0
    latent_size: tuple = (32, 32)
    seed: int = 0
    image_cond: Optional[torch.Tensor] = None
    init_latent: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None  # 1 = keep
    enable_hr: bool = False  # txt2img's Hires fix
    extra_generation_params: dict = field(default_factory=dict)
    denoiser: Any = None

    @property
    def batch_size(self):
        return len(self.conds_list)

    def sample(self):
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(self.batch_size, 4, *self.latent_size, generator=generator)
        image_cond = self.image_cond if self.image_cond is not None else torch.zeros(self.batch_size, 5, 1, 1)
        extra_args = dict(cond=(self.conds_list, self.cond), uncond=self.uncond, cond_scale=self.cfg_scale,
                          s_min_uncond=self.s_min_uncond, image_cond=image_cond)
        return SAMPLERS[self.sampler_name](self, noise, list(self.timesteps), extra_args)


def process_images(p, script, script_args, others=()):
    """A generation with the AlwaysVisible `script` and `others`, pairs of (script, its arguments), each
    hook run for every script in that order."""
    runs = [(script, script_args)] + list(others)
    for each, args in runs:
        each.process(p, *args)
    samples = p.sample()
    images = torch.sigmoid(samples[:, :3])  # stands in for the VAE decode: (B, 3, H, W) in 0..1
    for each, args in runs:
        each.postprocess_batch(p, *args, images=images, batch_number=0)
    p.infotext = dict(p.extra_generation_params)  # the host writes the infotexts after postprocess_batch
    for each, args in runs:
        each.postprocess(p, samples, *args)
    return samples
