"""Stand-in of modules.sd_samplers_cfg_denoiser.CFGDenoiser: the host's CFG batch layout and callbacks.

`cond` is given already reconstructed: (conds_list, tensor), where conds_list[i] lists the
(row of tensor, weight) pairs of image i (several pairs are an AND prompt). SDXL's dict conditionings reach
the callbacks as the webui's reconstructed batches carry them, with a `shape` (prompt_parser.DictWithShape),
which the denoiser reads.
"""
import torch

from modules import shared
from modules.prompt_parser import DictWithShape
from modules.script_callbacks import (AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams,
                                      cfg_after_cfg_callback, cfg_denoised_callback, cfg_denoiser_callback)
from modules.sd_samplers_common import InterruptedException


def catenate_conds(conds):
    if isinstance(conds[0], dict):
        return {key: torch.cat([cond[key] for cond in conds]) for key in conds[0]}
    return torch.cat(conds)


def subscript_cond(cond, start, end):
    if isinstance(cond, dict):
        return {key: value[start:end] for key, value in cond.items()}
    return cond[start:end]


class CFGDenoiser:
    mask_before_denoising = False

    def __init__(self, p, total_steps):
        self.p = p
        self.step = 0
        self.total_steps = total_steps
        self.mask = self.nmask = self.init_latent = None
        self.padded_cond_uncond = False
        self.model_wrap = None

    @property
    def inner_model(self):
        raise NotImplementedError

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def pad_cond_uncond(self, cond, uncond):
        """Pads the shorter of cond/uncond with the empty prompt's vectors (tensor conds)."""
        empty = shared.sd_model.cond_stage_model_empty_prompt
        repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        if repeats < 0:
            cond = torch.cat([cond, empty.repeat(cond.shape[0], -repeats, 1)], dim=1)
            self.padded_cond_uncond = True
        elif repeats > 0:
            uncond = torch.cat([uncond, empty.repeat(uncond.shape[0], repeats, 1)], dim=1)
            self.padded_cond_uncond = True
        return cond, uncond

    @staticmethod
    def make_condition_dict(c_crossattn, c_concat):
        if isinstance(c_crossattn, dict):
            return {**c_crossattn, "c_concat": [c_concat]}
        return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

    def combine_denoised(self, x_out, conds_list, batch, cond_scale):
        uncond = x_out[-batch:]
        denoised = uncond.clone()
        for i, conds in enumerate(conds_list):
            for row, weight in conds:
                denoised[i] += (x_out[row] - uncond[i]) * (weight * cond_scale)
        return denoised

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if shared.state.interrupted:
            raise InterruptedException
        conds_list, tensor = cond
        tensor, uncond = (DictWithShape(c, c["crossattn"].shape) if isinstance(c, dict) else c
                          for c in (tensor, uncond))
        opts = shared.opts
        batch = len(conds_list)
        if self.mask_before_denoising and self.mask is not None:
            x = x * self.nmask + self.init_latent * self.mask

        repeats = [len(conds) for conds in conds_list]
        x_in = torch.cat([x[i:i + 1].repeat(n, 1, 1, 1) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([sigma[i:i + 1].repeat(n) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat([image_cond[i:i + 1].repeat(n, 1, 1, 1) for i, n in enumerate(repeats)] + [image_cond])

        params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, shared.state.sampling_step,
                                   shared.state.sampling_steps, tensor, uncond, self)
        cfg_denoiser_callback(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        tensor, uncond = params.text_cond, params.text_uncond

        skip_uncond = (opts.skip_early_cond != 0 and self.step / self.total_steps <= opts.skip_early_cond) or \
            ((self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond)
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch], sigma_in[:-batch]

        self.padded_cond_uncond = False
        if opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=self.make_condition_dict(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for start in range(0, x_in.shape[0], batch):
                    end = start + batch
                    x_out[start:end] = self.inner_model(x_in[start:end], sigma_in[start:end], cond=self.make_condition_dict(
                        subscript_cond(cond_in, start, end), image_cond_in[start:end]))
        else:
            x_out = torch.zeros_like(x_in)
            chunk = batch * 2 if opts.batch_cond_uncond else batch
            cond_rows = tensor.shape[0]
            for start in range(0, cond_rows, chunk):
                end = min(start + chunk, cond_rows)
                x_out[start:end] = self.inner_model(x_in[start:end], sigma_in[start:end], cond=self.make_condition_dict(
                    subscript_cond(tensor, start, end), image_cond_in[start:end]))
            if not skip_uncond:
                x_out[-batch:] = self.inner_model(x_in[-batch:], sigma_in[-batch:],
                                                  cond=self.make_condition_dict(uncond, image_cond_in[-batch:]))

        if skip_uncond:  # the cond output of each image stands in for its uncond
            x_out = torch.cat([x_out, torch.cat([x_out[conds[0][0]:conds[0][0] + 1] for conds in conds_list])])

        cfg_denoised_callback(CFGDenoisedParams(x_out, shared.state.sampling_step, shared.state.sampling_steps,
                                                self.inner_model))
        denoised = self.combine_denoised(x_out, conds_list, batch, 1.0 if skip_uncond else cond_scale)
        if not self.mask_before_denoising and self.mask is not None:
            denoised = denoised * self.nmask + self.init_latent * self.mask

        after = AfterCFGCallbackParams(denoised, shared.state.sampling_step, shared.state.sampling_steps)
        cfg_after_cfg_callback(after)
        self.step += 1
        return after.x

    __call__ = forward
