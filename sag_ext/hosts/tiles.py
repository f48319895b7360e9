"""SAG per tile inside a tiling neighbour's UNet function wrapper: the Forge hosts' MultiDiffusion Integrated
(MultiDiffusion and Mixture of Diffusers).

Such a wrapper runs the UNet on batches of overlapping tiles of the image (each tile's rows in the call's
chunk order, tile after tile) and blends the tiles' outputs over the image with its weights. SAG's mask
needs each tile's own middle-block attention, which only those calls see, so SAG runs inside them, on
each tile as on an image of its own: the wrapper gets the call with one more chunk (the uncond rows once
more, whose rows carry SAG's correction) and, as its model function, `SagInTiles.tile_call`. That runs the
host's UNet on the tiles' own rows, gathered chunk by chunk so that the uncond rows of every tile form the
one chunk the capture records; then SAG's pass over those uncond tiles; and answers the carried rows with
each tile's correction. The wrapper blends them like its own outputs, so the step's correction is the
blend of the tiles' corrections, as its CFG result is the blend of the tiles' CFG results.
"""
import functools

import torch

from ..core.capture import UncondChunk
from ..core.guidance import X0Space
from ..core.session import SagSession
from .forge_call import COND, UNCOND, with_chunks_repeated, with_rows_of_chunks
from .rows import CannotCarry


class SagInTiles:
    """The UNet function wrapper that puts `session`'s SAG inside `theirs` (the tiling wrapper)."""

    def __init__(self, session: SagSession, theirs):
        self.session, self.theirs = session, theirs

    def __call__(self, apply_model, args: dict):
        x, chunks, c = args["input"], args["cond_or_uncond"], args["c"]
        if self.session.step is None or UNCOND not in chunks:
            return self.theirs(apply_model, args)
        total, size = x.shape[0], x.shape[0] // len(chunks)
        try:
            if "control" in c:
                raise CannotCarry("ControlNet's outputs inside MultiDiffusion's tiles are made for their own rows")
            carried_x, carried_timestep, carried_c = with_chunks_repeated(x, args["timestep"], c, chunks, UNCOND, 1)
            carried = {"input": carried_x, "timestep": carried_timestep, "c": carried_c,
                       "cond_or_uncond": list(chunks) + [UNCOND]}
            tile_call = functools.partial(self.tile_call, apply_model, list(chunks), size,
                                          c.get("transformer_options") or {})
            out = self.theirs(tile_call, carried)
            self.session.keep_tiles_correction(out[total:])
            return out[:total]
        except Exception as error:  # SAG steps aside; the host's call runs as it came
            self.session.stop(f"inside the tiles of {type(self.theirs).__name__}: {type(error).__name__}: {error}")
            return self.theirs(apply_model, args)

    def tile_call(self, apply_model, chunks: list, size: int, options: dict, x, timestep, **c):
        """One call of the tiling wrapper over tiles of `size` rows per chunk, with our chunk last in each
        tile: the host's rows, SAG's pass over their uncond tiles, and each tile's correction in our rows."""
        per_tile = (len(chunks) + 1) * size
        if x.shape[0] % per_tile:
            raise CannotCarry(f"a call of {x.shape[0]} rows for tiles of {per_tile}")
        tiles, total = x.shape[0] // per_tile, x.shape[0]
        rows = torch.arange(total, device=x.device).view(tiles, len(chunks) + 1, size)  # made there: no copy
        host = rows[:, :-1].transpose(0, 1).reshape(-1)  # chunk by chunk, each tile after tile
        uncond = rows[:, chunks.index(UNCOND)].reshape(-1)
        self.session.arm_tiles(UncondChunk(target=tiles * size))
        out_host = apply_model(x[host], timestep[host], **with_rows_of_chunks(c, host, total, chunks, options))
        at = chunks.index(UNCOND) * tiles * size
        out_uncond = out_host[at:at + tiles * size]
        x_uncond, t_uncond = x[uncond], timestep[uncond]
        pass_kwargs = with_rows_of_chunks(c, uncond, total, [COND], options)  # as Forge's SAG pass: a cond chunk
        correction = self.session.tile_correction(x_uncond, out_uncond, t_uncond, X0Space(),
                                                  lambda x_degraded: apply_model(x_degraded, t_uncond, **pass_kwargs))
        out = out_host.new_empty((total, *out_host.shape[1:]))
        out[host] = out_host
        out[rows[:, -1].reshape(-1)] = correction
        return out
