"""Random-weight LoRAs for the SD1 test checkpoints (``sd15``, ``sd1_tiny``: the same blocks at widths 1280 and
128), in kohya's format: rank 4 on the middle block's transformer (attention projections, the last feed-forward
layer) and the first attention level of the output blocks, the layers PAG, SEG and SAG hook and those around them.

    python harness/lora.py <webui data dir>/models/Lora [sd15|sd1_tiny]
"""
from __future__ import annotations

import sys
from pathlib import Path

WIDTHS = {"sd15": 1280, "sd1_tiny": 128}  # the checkpoint's width of both blocks
RANK = 4
BLOCKS = ("mid_block_attentions_0", "up_blocks_1_attentions_0")  # kohya's (diffusers') names
LAYERS = [("attn1_to_q", 1, 1), ("attn1_to_k", 1, 1), ("attn1_to_v", 1, 1), ("attn1_to_out_0", 1, 1),
          ("attn2_to_q", 1, 1), ("ff_net_2", 4, 1)]  # (layer, in features, out features) in the block's widths


def name(checkpoint: str) -> str:
    return f"sag_test_lora_{checkpoint}"


def write_lora(directory: str | Path, checkpoint: str = "sd15", seed: int = 0) -> Path:
    """Write the LoRA for `checkpoint` into ``<directory>`` (once) and return its path."""
    import torch
    from safetensors.torch import save_file

    path = Path(directory) / f"{name(checkpoint)}.safetensors"
    width = WIDTHS[checkpoint]
    if path.exists():
        return path
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block in BLOCKS:
        for layer, ins, outs in LAYERS:
            key = f"lora_unet_{block}_transformer_blocks_0_{layer}"
            state[f"{key}.lora_down.weight"] = torch.randn(RANK, ins * width, generator=generator) / (ins * width) ** 0.5
            state[f"{key}.lora_up.weight"] = torch.randn(outs * width, RANK, generator=generator) * 0.5 / RANK ** 0.5
            state[f"{key}.alpha"] = torch.tensor(float(RANK))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.half().contiguous() for key, value in state.items()}, str(path))
    return path


if __name__ == "__main__":
    print(write_lora(sys.argv[1], *sys.argv[2:3]))
