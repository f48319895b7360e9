"""Which self-attention layers a perturbation changes: the block list users know from
pamparamm's sd-perturbed-attention, read and found in an LDM-layout UNet.

`m0,u0.4,d2-3,u1.0-2`: `d` input blocks, `m` the middle block, `u` output blocks, counted among the
blocks that have a transformer (SD1.5: d0-d5, m0, u0-u8; SDXL: d0-d3, m0, u0-u5), each with a range
`a-b`; after a dot, the transformer blocks inside it (SDXL's deepest blocks have 0-9), likewise with a
range; without one, all of them.
"""
import re
from dataclasses import dataclass
from typing import Optional

import torch

PARTS = {"d": "input_blocks", "m": "middle_block", "u": "output_blocks"}
_ITEM = re.compile(r"^([dmu])(\d+)(?:-(\d+))?(?:\.(\d+)(?:-(\d+))?)?$")


@dataclass(frozen=True)
class LayerRange:
    part: str  # "d", "m" or "u"
    blocks: tuple  # (first, last) among that part's blocks with a transformer
    transformers: Optional[tuple]  # (first, last) transformer block inside each, or None: all


def parse_layers(text: str) -> tuple:
    """The LayerRanges of a block list; ValueError naming the item that is not one."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("the block list is empty (e.g. m0, or m0,u0.4)")
    ranges = []
    for item in items:
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(f"{item!r} is not a block (d, m or u, an index or range, and optionally "
                             ".transformer index or range, e.g. m0, u0.4, d2-3)")
        part, first, last, t_first, t_last = match.groups()
        blocks = (int(first), int(last if last is not None else first))
        transformers = None if t_first is None else (int(t_first), int(t_last if t_last is not None else t_first))
        for low, high in (blocks, transformers or (0, 0)):
            if low > high:
                raise ValueError(f"{item!r}: the range {low}-{high} runs backwards")
        ranges.append(LayerRange(part, blocks, transformers))
    return tuple(ranges)


def normalised_layers(text: str) -> str:
    """A block list checked and written the usual way ("m0, u0.4 " -> "m0,u0.4")."""
    parse_layers(text)
    return ",".join(item.strip() for item in text.split(",") if item.strip())


def transformer_groups(unet: torch.nn.Module, part: str) -> list:
    """The spatial transformers of one part of the UNet, in order: the blocks the block list counts."""
    blocks = getattr(unet, PARTS[part], None)
    if blocks is None:
        return []
    groups = []
    for block in [blocks] if part == "m" else blocks:  # the middle block is one block, the others lists of them
        modules = block if isinstance(block, torch.nn.Sequential) else [block]
        transformers = [module for module in modules if hasattr(module, "transformer_blocks")]
        groups.extend(transformers[:1])
    return groups


def find_layers(unet: torch.nn.Module, text: str) -> list:
    """[(spatial transformer, attn1)] that the block list names in `unet`; ValueError for a block or
    transformer this model does not have."""
    found = []
    for layer in parse_layers(text):
        groups = transformer_groups(unet, layer.part)
        for index in range(layer.blocks[0], layer.blocks[1] + 1):
            if index >= len(groups):
                raise ValueError(f"{layer.part}{index}: this model has {len(groups)} such blocks "
                                 f"({layer.part}0-{layer.part}{len(groups) - 1})" if groups else
                                 f"{layer.part}{index}: this model has no such block")
            transformer = groups[index]
            blocks = list(transformer.transformer_blocks)
            low, high = layer.transformers or (0, len(blocks) - 1)
            if high >= len(blocks):
                raise ValueError(f"{layer.part}{index}.{high}: that block has {len(blocks)} transformers "
                                 f"(0-{len(blocks) - 1})")
            found.extend((transformer, block.attn1) for block in blocks[low:high + 1])
    unique = {id(attn): (transformer, attn) for transformer, attn in found}
    return list(unique.values())
