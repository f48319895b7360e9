"""A random-weight hypernetwork for ``sd1_tiny``, in the webui's hypernetwork format.

Layers for width 64 (the text context and the second level's self-attention) and 128 (the middle
block's self-attention), structure 1-2-1 with ReLU, as the webui's "Create hypernetwork" makes them.
It is written in torch's legacy (non-zip) format: webui 1.10's safe unpickler refuses the zip entries
that newer torch versions add (``.format_version``), so a hypernetwork the webui itself creates under
torch 2.14 cannot be loaded back.

    python harness/hypernetwork.py <webui data dir>/models/hypernetworks
"""
from __future__ import annotations

import sys
from pathlib import Path

NAME = "sag_test_hypernetwork"
WIDTHS = (64, 128)


def write_hypernetwork(directory: str | Path, seed: int = 0) -> Path:
    """Write ``<directory>/<NAME>.pt`` (once) and return its path."""
    import torch

    path = Path(directory) / f"{NAME}.pt"
    if path.exists():
        return path
    generator = torch.Generator().manual_seed(seed)

    def linear(out_features, in_features):
        weight = torch.randn(out_features, in_features, generator=generator) / in_features ** 0.5
        return weight, torch.zeros(out_features)

    def module(width):  # HypernetworkModule: x + Linear(2w -> w)(ReLU(Linear(w -> 2w)(x)))
        (w0, b0), (w2, b2) = linear(2 * width, width), linear(width, 2 * width)
        return {"linear.0.weight": w0, "linear.0.bias": b0, "linear.2.weight": w2, "linear.2.bias": b2}

    state = {width: (module(width), module(width)) for width in WIDTHS}
    state.update(name=NAME, step=0, layer_structure=[1, 2, 1], activation_func="relu", is_layer_norm=False,
                 weight_initialization="XavierNormal", activate_output=False, use_dropout=False,
                 dropout_structure=[0, 0, 0], last_layer_dropout=False, sd_checkpoint=None,
                 sd_checkpoint_name=None, optional_info=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp, _use_new_zipfile_serialization=False)
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(write_hypernetwork(sys.argv[1]))
