"""Rows of a host's UNet batch, as both adapters read and extend them: a conditioning's row count, and a
per-row input with some of its rows repeated (PAG's and SEG's rows in the host's own call) or taken in
another order (SAG inside a tiling neighbour's calls)."""
import torch


class CannotCarry(ValueError):
    """A per-row input whose rows do not match the call's."""


def row_count(cond) -> int:
    """The rows of a conditioning: a tensor, or SDXL's dict of them."""
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def per_row(value, total: int, change):
    """`change(tensor)` for every tensor of a per-row input of a batch of `total` rows (a tensor, or lists and
    dicts of them, as ControlNet's outputs); anything else as it is. CannotCarry for a tensor of other rows."""
    if isinstance(value, dict):
        return {key: per_row(item, total, change) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(per_row(item, total, change) for item in value)
    if not torch.is_tensor(value):
        return value
    if value.ndim == 0 or value.shape[0] != total:
        raise CannotCarry(f"a conditioning of {tuple(value.shape)} in a call of {total} rows")
    return change(value)


def with_rows_repeated(value, chosen: slice, copies: int, total: int, at=None):
    """A per-row input with `copies` copies of its rows `chosen` put in at row `at` (None: after the last)."""
    at = total if at is None else at
    return per_row(value, total, lambda t: torch.cat([t[:at]] + [t[chosen]] * copies + [t[at:]]))


def rows_taken(value, index: torch.Tensor, total: int):
    """A per-row input with the rows `index` (a LongTensor) of each of its tensors, in that order."""
    return per_row(value, total, lambda t: t[index.to(t.device)])
