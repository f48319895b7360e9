"""SAG per tile inside A1111's Tiled Diffusion (pkuliyi2015/multidiffusion-upscaler-for-automatic1111), in its
MultiDiffusion and Mixture of Diffusers methods.

Tiled Diffusion replaces the denoiser's `forward` (MultiDiffusion) or the model's `apply_model` (Mixture of
Diffusers) with one that runs the UNet on batches of overlapping tiles of the latent, each tile with every
row of the step in the step's order, tile after tile, and blends the tiles' outputs (x0 or eps) over the
latent with its weights. SAG's mask needs each tile's own middle-block attention, which only those calls
see, so SAG runs inside them, on each tile as on an image of its own, and Tiled Diffusion blends the result:

* the step gets B carried rows just before its uncond rows: x zeros, the uncond rows' sigma and image
  conditioning, any text rows (the UNet never runs them);
* a forward pre-hook on the UNet, before every other hook, takes the carried rows out of each tile call and
  arms the capture on every tile's uncond rows; a forward hook then runs SAG's pass over those rows and
  answers the carried rows with each tile's correction in the model's eps (`EpsSpaceOfAlphas`);
* the denoiser turns the carried rows' eps into its output without their x (zeros), linearly: k-diffusion's
  x0 = x - sigma * eps is then the correction in x0 (X0Space's), the timestep samplers' eps is EpsSpace's.
  Tiled Diffusion blends them like its own outputs, so the carried rows of the step's output hold the blend
  of the tiles' corrections, as its other rows hold the blend of the tiles' predictions.
"""
from typing import Optional

import torch

from ..core.capture import LastRowsOfEachTile
from ..core.guidance import EpsSpaceOfAlphas
from ..core.hooks import MarkedHooks
from ..core.perturbation import PerturbationHooks
from .rows import CannotCarry, per_row

METHODS = ("MultiDiffusion", "MixtureOfDiffusers")  # Tiled Diffusion's classes that tile every call this way
OWNER_ATTRIBUTE = "_sag_tiled_diffusion"


def tiled_diffusion(denoiser, sd_model, latent_size: tuple):
    """Tiled Diffusion's object, when it tiles this step's UNet calls in one of `METHODS`, or None (it does not
    tile a latent of another size than its own, e.g. the hires pass)."""
    for owner, name in ((getattr(denoiser, "inner_model", None), "forward"), (sd_model, "apply_model")):
        method = getattr(owner, "__dict__", {}).get(name)
        tiler = getattr(method, "__self__", None)
        if type(tiler).__name__ in METHODS and hasattr(tiler, "batched_bboxes"):
            return tiler if (getattr(tiler, "h", None), getattr(tiler, "w", None)) == tuple(latent_size) else None
    return None


def why_not_per_tile(tiler, p, opts, sd_model, text_cond, text_uncond) -> Optional[str]:
    """Why SAG cannot run inside these tiles, or None."""
    if getattr(tiler, "custom_bboxes", None) or not getattr(tiler, "draw_background", True):
        return "Tiled Diffusion's regions run their own prompts"
    if getattr(sd_model, "parameterization", "eps") != "eps":
        return "a v-prediction model inside Tiled Diffusion's tiles"
    if any(key.startswith("ControlNet") for key in p.extra_generation_params):
        return "ControlNet inside Tiled Diffusion's tiles"
    if not getattr(opts, "batch_cond_uncond", True):
        return "Tiled Diffusion with the setting \"Batch cond/uncond\" off"
    if getattr(opts, "skip_early_cond", 0) or getattr(p, "s_min_uncond", 0):
        return "Tiled Diffusion with Skip early CFG or NGMS"
    lengths = {(cond["crossattn"] if isinstance(cond, dict) else cond).shape[1] for cond in (text_cond, text_uncond)}
    if len(lengths) > 1 and not (getattr(opts, "pad_cond_uncond", False) or getattr(opts, "pad_cond_uncond_v0", False)):
        return ("Tiled Diffusion with a prompt and negative prompt of different lengths (the setting \"Pad prompt/"
                "negative prompt\" puts them in one call)")
    return None


class SagInTiledDiffusion(MarkedHooks):
    """The hooks on the UNet for one SAG step inside Tiled Diffusion's tiles. A tile has `per_tile` rows: the
    `count` rows `carried` are ours, the last `count` its uncond rows; `alphas` are their alphas_cumprod (B,).
    An error inside is kept in `error` (a hook must not abort the host's call, nor remove hooks while the
    UNet runs them) and the carried rows then answer zeros."""

    ATTRIBUTE = OWNER_ATTRIBUTE

    def __init__(self, unet: torch.nn.Module, session, per_tile: int, carried: slice, count: int,
                 alphas: torch.Tensor):
        self.unet, self.session = unet, session
        self.per_tile, self.carried, self.count, self.alphas = per_tile, carried, count, alphas
        self.error = None
        self._call = None  # (rows, kept, carried, tiles) of the call in progress
        self._inside = False  # SAG's own pass, made inside a call
        type(self).release(unet)
        self._handles = [unet.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True),
                         unet.register_forward_hook(self._after, with_kwargs=True)]
        setattr(unet, OWNER_ATTRIBUTE, self)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._call = [], None
        if getattr(self.unet, OWNER_ATTRIBUTE, None) is self:
            delattr(self.unet, OWNER_ATTRIBUTE)

    def _before(self, module, args, kwargs):
        if self._inside or self.error is not None:
            return None
        try:
            x = args[0] if args else kwargs["x"]
            rows = x.shape[0]
            if rows % self.per_tile:
                raise CannotCarry(f"a UNet call of {rows} rows inside tiles of {self.per_tile}")
            tiles = rows // self.per_tile
            index = torch.arange(rows, device=x.device).view(tiles, self.per_tile)
            kept = torch.cat([index[:, :self.carried.start], index[:, self.carried.stop:]], dim=1).reshape(-1)
            carried = index[:, self.carried].reshape(-1)
            kept_args, kept_kwargs = per_row((tuple(args), kwargs), rows, lambda t: t[kept])
            self.session.arm_tiles(LastRowsOfEachTile(tiles, self.per_tile - self.count, self.count))
            self._call = (rows, kept, carried, tiles)
            return kept_args, kept_kwargs
        except Exception as error:  # the call runs as it came; the carried rows then answer zeros
            self.error, self._call = error, None
            return None

    def _after(self, module, args, kwargs, output):
        if self._inside or self._call is None:
            return None
        (rows, kept, carried, tiles), self._call = self._call, None
        whole = output.new_zeros((rows, *output.shape[1:]))
        whole[kept] = output
        try:
            whole[carried] = self._tiles_correction(module, args, kwargs, output, tiles)
        except Exception as error:
            self.error = error
        return whole

    def _tiles_correction(self, unet, args, kwargs, output, tiles: int) -> torch.Tensor:
        """SAG on every tile of this call from its uncond rows: the unscaled correction in the model's eps."""
        per_tile, total = output.shape[0] // tiles, output.shape[0]
        index = torch.arange(total, device=output.device).view(tiles, per_tile)[:, -self.count:].reshape(-1)
        uncond_args, uncond_kwargs = per_row((tuple(args), kwargs), total, lambda t: t[index])
        x = uncond_args[0] if uncond_args else uncond_kwargs["x"]
        channels = output.shape[1]  # an inpainting model's x also holds its image conditioning

        def degraded_pass(x_degraded):
            x_in = torch.cat([x_degraded.to(x.dtype), x[:, channels:]], dim=1) if x.shape[1] > channels else x_degraded
            pass_args = (x_in, *uncond_args[1:]) if uncond_args else uncond_args
            pass_kwargs = uncond_kwargs if uncond_args else {**uncond_kwargs, "x": x_in}
            perturbation = PerturbationHooks.attached(unet)
            self._inside = True
            try:
                if perturbation is None:
                    return unet(*pass_args, **pass_kwargs)
                with perturbation.paused():
                    return unet(*pass_args, **pass_kwargs)
            finally:
                self._inside = False

        # in float32, as the denoiser's own output is (the UNet may answer in float16)
        return self.session.tile_correction(x[:, :channels].float(), output[index].float(), self.alphas.repeat(tiles),
                                            EpsSpaceOfAlphas(), degraded_pass)
