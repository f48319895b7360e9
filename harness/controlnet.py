"""Random-weight control models for the ControlNet extension's tests: a T2I-Adapter sized for `sd1_tiny` and
an SD1 ControlNet for `sd1_wide`, as safetensors state dicts (numpy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def t2i_adapter_state_dict(seed: int = 0) -> dict:
    """Random weights of a T2I-Adapter for sd1_tiny, in the layout of the SD1.5 "full" adapters
    (nums_rb 2, 1x1 convolutions, identity skips, average-pool downsampling): four levels of 32, 64, 128
    and 128 channels at latent/1 .. latent/8, the widths of the sd1_tiny UNet's input levels.

    (ControlNet's loader builds SD1 ControlNets at SD1.5's fixed widths, whereas a T2I-Adapter's widths
    are read from its weights; the ControlNet tests use `sd1_wide` instead.)"""
    rng = np.random.default_rng(seed)

    def conv(out_c, in_c, k, gain=1.0):
        std = gain / np.sqrt(in_c * k * k)
        return {"weight": (rng.standard_normal((out_c, in_c, k, k)) * std).astype(np.float32),
                "bias": np.zeros(out_c, np.float32)}

    channels, nums_rb, cin = [32, 64, 128, 128], 2, 3 * 8 * 8  # RGB hint, pixel-unshuffled by 8
    layers = {"conv_in": conv(channels[0], cin, 3)}
    for level, width in enumerate(channels):
        for r in range(nums_rb):
            prefix = f"body.{level * nums_rb + r}"
            in_c = channels[level - 1] if level > 0 and r == 0 else width
            if in_c != width:
                layers[f"{prefix}.in_conv"] = conv(width, in_c, 1)
            layers[f"{prefix}.block1"] = conv(width, width, 3)
            layers[f"{prefix}.block2"] = conv(width, width, 1, gain=0.5)
    return {f"{name}.{kind}": tensor for name, params in layers.items() for kind, tensor in params.items()}


def sd1_controlnet_state_dict(unet_checkpoint: Path, seed: int = 0) -> dict:
    """A random-weight SD1 ControlNet for `sd1_wide`, made the way ControlNets start their training: the
    encoder (time embedding, input blocks, middle block) copied from the UNet, plus a hint encoder for an
    RGB control image and one 1x1 output convolution per input block and for the middle block. The
    convolutions that ControlNet starts at zero are random here (gain 0.5), or the control would do
    nothing."""
    from safetensors import safe_open

    rng = np.random.default_rng(seed)

    def conv(name, out_c, in_c, k, gain=1.0):
        std = gain / np.sqrt(in_c * k * k)
        return {f"{name}.weight": (rng.standard_normal((out_c, in_c, k, k)) * std).astype(np.float32),
                f"{name}.bias": np.zeros(out_c, np.float32)}

    prefix = "model.diffusion_model."
    state = {}
    with safe_open(str(unet_checkpoint), framework="numpy") as unet:
        for key in unet.keys():
            if key.startswith(tuple(prefix + part for part in ("time_embed.", "input_blocks.", "middle_block."))):
                state[key[len(prefix):]] = unet.get_tensor(key)
        model_channels = unet.get_tensor(prefix + "input_blocks.0.0.weight").shape[0]
    hint_widths = [3, 16, 16, 32, 32, 96, 96, 256, model_channels]
    for index, (in_c, out_c) in enumerate(zip(hint_widths, hint_widths[1:])):
        state.update(conv(f"input_hint_block.{index * 2}", out_c, in_c, 3))
    widths = [model_channels]  # output width of each input block: SD1.5's 2 res blocks per level, mult 1-2-4-4
    for level, mult in enumerate((1, 2, 4, 4)):
        widths += [model_channels * mult] * (2 if level == 3 else 3)
    for index, width in enumerate(widths):
        state.update(conv(f"zero_convs.{index}.0", width, width, 1, gain=0.5))
    state.update(conv("middle_block_out.0", widths[-1], widths[-1], 1, gain=0.5))
    return state
