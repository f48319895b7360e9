"""Stand-in of A1111's Tiled Diffusion (pkuliyi2015/multidiffusion-upscaler-for-automatic1111,
`tile_methods/multidiffusion.py` and `mixtureofdiffusers.py`): its contract with the webui's denoiser and
model, modelled faithfully, with the names this extension reads (the class names, `batched_bboxes`, `h`, `w`,
`custom_bboxes`, `draw_background`). Grid tiles of `tile` latent pixels overlapping by `overlap`, the last row
and column shifted to end at the edge, `batch` tiles per UNet call, each tile with all N rows of the call in
their order, tile after tile; sigma or timestep and the text conditioning repeated per tile, an image-sized
image conditioning cut per tile; a latent of another size (the hires pass) is not tiled.

* MultiDiffusion replaces the denoiser's `forward` and averages the tiles' outputs (x0 for k-diffusion,
  eps for the timestep samplers) where they overlap;
* Mixture of Diffusers replaces the model's `apply_model` and weights each tile's eps by a gaussian over
  the tile, divided by the weights' sum."""
import torch

from forge_standin.multidiffusion import tile_starts


class TiledDiffusion:
    def __init__(self, height: int, width: int, tile: int, overlap: int, batch: int):
        self.h, self.w = height, width
        boxes = [(slice(None), slice(None), slice(top, top + tile), slice(left, left + tile))
                 for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
        self.batched_bboxes = [boxes[first:first + batch] for first in range(0, len(boxes), batch)]
        self.custom_bboxes, self.draw_background = [], True
        self.tile_weights = self.get_tile_weights(tile)
        self.weights = torch.zeros(1, 1, height, width)
        for box in boxes:
            self.weights[box] += self.tile_weights
        self.calls = []  # rows of each tiled UNet call

    def get_tile_weights(self, tile: int):
        return torch.ones(tile, tile)

    def tiled_cond(self, cond: dict, bboxes: list) -> dict:
        """Their `repeat_cond_dict`: the text rows repeated per tile, the image conditioning cut per tile."""
        text, image = cond["c_crossattn"][0], cond["c_concat"][0]
        if image.shape[2:] == (self.h, self.w):
            image = torch.cat([image[box] for box in bboxes])
        else:
            image = image.repeat(len(bboxes), 1, 1, 1)
        return {"c_crossattn": [text.repeat(len(bboxes), 1, 1)], "c_concat": [image]}

    def tiles(self, x_in, noise_level, cond, forward, weighted: bool):
        n = x_in.shape[0]
        buffer = torch.zeros_like(x_in)
        for bboxes in self.batched_bboxes:
            x_tile = torch.cat([x_in[box] for box in bboxes])
            self.calls.append(x_tile.shape[0])
            out = forward(x_tile, noise_level.repeat(len(bboxes)), self.tiled_cond(cond, bboxes))
            for i, box in enumerate(bboxes):
                tile_out = out[i * n:(i + 1) * n]
                buffer[box] += tile_out * self.tile_weights / self.weights[box] if weighted else tile_out
        return buffer


class MultiDiffusion(TiledDiffusion):
    def hook(self, denoiser) -> None:
        self.sampler_forward = denoiser.inner_model.forward
        denoiser.inner_model.forward = self.kdiff_forward

    def kdiff_forward(self, x_in, sigma_in, cond):
        if tuple(x_in.shape[-2:]) != (self.h, self.w):
            return self.sampler_forward(x_in, sigma_in, cond=cond)
        buffer = self.tiles(x_in, sigma_in, cond, lambda x, s, c: self.sampler_forward(x, s, cond=c), weighted=False)
        return torch.where(self.weights > 1, buffer / self.weights, buffer)


class MixtureOfDiffusers(TiledDiffusion):
    def get_tile_weights(self, tile: int):
        steps = torch.arange(tile, dtype=torch.float32)
        bell = torch.exp(-0.5 * ((steps - (tile - 1) / 2) / (0.3 * tile)) ** 2)
        return bell[:, None] * bell[None, :]

    def hook(self, sd_model) -> None:
        sd_model.apply_model_original_md = self.original = sd_model.apply_model
        sd_model.apply_model = self.apply_model_hijack

    @staticmethod
    def unhook(sd_model) -> None:
        sd_model.apply_model = sd_model.apply_model_original_md
        del sd_model.apply_model_original_md

    def apply_model_hijack(self, x_in, t_in, cond):
        if tuple(x_in.shape[-2:]) != (self.h, self.w):
            return self.original(x_in, t_in, cond)
        return self.tiles(x_in, t_in, cond, self.original, weighted=True)
