"""The keyword arguments `c` of a Forge-family UNet call (`apply_model(x, t, **c)`), for a call with other rows:
every per-row conditioning (ControlNet's outputs included) takes the same rows as x, and the transformer
options name the new call's chunks (`cond_or_uncond`, and where the host has them, `cond_mark`,
`cond_indices` and `uncond_indices`)."""
import torch

from .rows import rows_taken, with_rows_repeated

COND, UNCOND = 0, 1  # a cond and an uncond chunk in `cond_or_uncond`


def with_chunks_repeated(x: torch.Tensor, timestep: torch.Tensor, c: dict, chunks: list, kind: int, copies: int):
    """(x, timestep, c) of a call in `chunks` with `copies` more chunks of `kind` after them, each a copy of
    its `kind` chunk."""
    total = x.shape[0]
    size = total // len(chunks)
    rows = slice(chunks.index(kind) * size, (chunks.index(kind) + 1) * size)
    options = dict(c.get("transformer_options") or {})
    options["cond_or_uncond"] = list(chunks) + [kind] * copies
    if "cond_mark" in options:
        options["cond_mark"] = with_rows_repeated(options["cond_mark"], rows, copies, total)
    indices = "cond_indices" if kind == COND else "uncond_indices"
    if indices in options:
        options[indices] = list(options[indices]) + list(range(total, total + copies * size))
    x, timestep = (with_rows_repeated(t, rows, copies, total) for t in (x, timestep))
    return x, timestep, _with_options(c, options, lambda value: with_rows_repeated(value, rows, copies, total))


def with_rows_of_chunks(c: dict, index: torch.Tensor, total: int, chunks: list, options: dict) -> dict:
    """`c` of a call of `total` rows, for a call of its rows `index` in `chunks` of equal size; the
    transformer options from `options`."""
    options, size = dict(options), index.shape[0] // len(chunks)
    options["cond_or_uncond"] = list(chunks)
    if "cond_mark" in options:
        mark = options["cond_mark"]  # made on its device: no copy of host data, which waits for the GPU
        options["cond_mark"] = torch.cat([torch.full((size,), kind, dtype=mark.dtype, device=mark.device)
                                          for kind in chunks])
    for indices, kind in (("cond_indices", COND), ("uncond_indices", UNCOND)):
        if indices in options:
            options[indices] = [i * size + r for i, each in enumerate(chunks) if each == kind for r in range(size)]
    return _with_options(c, options, lambda value: rows_taken(value, index, total))


def _with_options(c: dict, options: dict, rows) -> dict:
    return {key: options if key == "transformer_options" else value if key == "control_model" else rows(value)
            for key, value in c.items()}
