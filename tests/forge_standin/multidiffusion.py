"""Stand-in of the Forge hosts' MultiDiffusion Integrated (extensions-builtin/sd_forge_multidiffusion,
`MultiDiffusion.__call__`), the UNet function wrapper that runs the UNet over tiles of the image: its
contract with the UNet call, modelled faithfully. Tiles of `tile` latent pixels overlapping by `overlap`,
the last row and column shifted to end at the edge; `batch` tiles per call, each tile's N rows as the
call had them (tile after tile); the timestep and the text conditioning repeated per tile, image-sized
`c_concat`/`y` cut per tile; the transformer options as they are; the outputs summed into the image and
divided by how many tiles cover each pixel, or (`gaussian`, its Mixture of Diffusers) weighted by a
gaussian over each tile and divided by the weights' sum."""
import torch


def tile_starts(size: int, tile: int, overlap: int) -> list:
    starts = list(range(0, max(size - tile, 0) + 1, tile - overlap))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


class MultiDiffusion:
    def __init__(self, tile: int, overlap: int, batch: int, gaussian: bool = False):
        self.tile, self.overlap, self.batch, self.gaussian = tile, overlap, batch, gaussian
        self.calls = []  # rows of each UNet call it makes

    def weight(self) -> torch.Tensor:
        """(tile, tile): each tile's weight per pixel."""
        if not self.gaussian:
            return torch.ones(self.tile, self.tile)
        steps = torch.arange(self.tile, dtype=torch.float32)
        bell = torch.exp(-0.5 * ((steps - (self.tile - 1) / 2) / (0.3 * self.tile)) ** 2)
        return bell[:, None] * bell[None, :]

    def boxes(self, height: int, width: int) -> list:
        """(row slice, column slice) of each tile."""
        return [(slice(top, top + self.tile), slice(left, left + self.tile))
                for top in tile_starts(height, self.tile, self.overlap)
                for left in tile_starts(width, self.tile, self.overlap)]

    def __call__(self, model_function, args: dict):
        x, t, c = args["input"], args["timestep"], args["c"]
        n, _, height, width = x.shape
        boxes = self.boxes(height, width)
        buffer, count, weight = torch.zeros_like(x), torch.zeros_like(x[:1, :1]), self.weight()
        for first in range(0, len(boxes), self.batch):
            batch = boxes[first:first + self.batch]
            x_tile = torch.cat([x[:, :, rows, cols] for rows, cols in batch])
            c_tile = dict(c)
            c_tile["c_crossattn"] = c["c_crossattn"].repeat(len(batch), 1, 1)
            for key in ("y", "c_concat"):
                if key in c:
                    image_sized = c[key].ndim == 4 and c[key].shape[2:] == (height, width)
                    c_tile[key] = (torch.cat([c[key][:, :, rows, cols] for rows, cols in batch]) if image_sized
                                   else c[key].repeat(len(batch), *([1] * (c[key].ndim - 1))))
            self.calls.append(x_tile.shape[0])
            out = model_function(x_tile, t.repeat(len(batch)), **c_tile)
            for i, (rows, cols) in enumerate(batch):
                buffer[:, :, rows, cols] += out[i * n:(i + 1) * n] * weight
                count[:, :, rows, cols] += weight
        return buffer / count if self.gaussian else torch.where(count > 1, buffer / count, buffer)
