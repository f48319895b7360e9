"""An independent float64 reference of PAG and SEG, written from the papers and the peers' code
(ComfyUI's `nodes_pag.py`, pamparamm's `guidance_utils.py`): a float64 copy of the UNet whose chosen
self-attention modules compute the changed attention explicitly (the full softmax, loops for the blur),
and the guidance combination with its rescales."""
import copy
import math
import types

import torch


def seg_kernel(sigma: float, height: int, width: int) -> list:
    """pamparamm's `gaussian_blur_2d` kernel: ceil(6 sigma) + 1 taps made odd, capped by the width to an odd
    size; where its reflect padding would not fit the grid's height (the reference fails there: a grid wider
    than twice its height), capped further to 2 * min(h, w) - 1 taps."""
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, width - (width % 2 - 1), 2 * min(height, width) - 1)
    half = (size - 1) / 2
    weights = [math.exp(-0.5 * ((i - half) / sigma) ** 2) for i in range(size)]
    return [w / sum(weights) for w in weights]


def blur_tokens(q: torch.Tensor, grid: tuple, sigma: float) -> torch.Tensor:
    """(B, h*w, C) queries blurred over the (h, w) grid by direct sums with reflect padding; sigma < 0: the mean."""
    q = q.double()
    if sigma < 0:
        return q.mean(dim=1, keepdim=True).expand_as(q).clone()
    h, w = grid
    kernel = seg_kernel(sigma, h, w)
    half = len(kernel) // 2

    def reflect(i, n):
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    image = q.reshape(q.shape[0], h, w, q.shape[2])
    out = torch.zeros_like(image)
    for a, wa in enumerate(kernel):
        rows = [reflect(i + a - half, h) for i in range(h)]
        for b, wb in enumerate(kernel):
            cols = [reflect(j + b - half, w) for j in range(w)]
            out += wa * wb * image[:, rows][:, :, cols]
    return out.reshape(q.shape)


def _changed_forward(attn, kind, sigma, grids):
    """Attention computed explicitly in float64: "plain", PAG's "identity" or SEG's "smoothed_query"."""
    def forward(self, x, context=None, mask=None, **kwargs):
        if kind == "identity":  # the attention map is the identity: the output is V
            return self.to_out(self.to_v(x))
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if kind == "smoothed_query":
            q = blur_tokens(q, grids[id(self)], sigma)
        b, n, inner = q.shape
        d = inner // self.heads
        split = [t.reshape(b, t.shape[1], self.heads, d).transpose(1, 2) for t in (q, k, v)]
        probs = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(d), dim=-1)
        return self.to_out((probs @ split[2]).transpose(1, 2).reshape(b, n, inner))
    return types.MethodType(forward, attn)


def perturbed_unet(unet: torch.nn.Module, layer_names: list, kind: str, sigma: float = 0.0) -> torch.nn.Module:
    """A float64 copy of `unet` whose attn1 modules named `layer_names` (module paths) compute PAG's
    ("identity") or SEG's ("smoothed_query", `sigma`) attention."""
    model = copy.deepcopy(unet).double()
    model.dtype = torch.float64  # ldm's UNet casts its input to this
    for module in model.modules():  # and its GroupNorm32 to float32
        if isinstance(module, torch.nn.GroupNorm):
            module.forward = types.MethodType(torch.nn.GroupNorm.forward, module)
    # ldm makes the timestep embedding in float32 whatever the model's dtype
    model.time_embed.register_forward_pre_hook(lambda module, args: tuple(a.double() for a in args))
    for module in model.modules():
        if hasattr(module, "to_q") and hasattr(module, "heads"):
            module.forward = _changed_forward(module, "plain", 0.0, {})
    grids = {}
    for name in layer_names:
        attn = model.get_submodule(name)
        transformer = model.get_submodule(name.split(".transformer_blocks.")[0])
        transformer.register_forward_pre_hook(
            lambda module, args, attn=attn: grids.__setitem__(id(attn), tuple(args[0].shape[-2:])))
        attn.forward = _changed_forward(attn, kind, sigma, grids)
    return model


def guided(cfg, cond, perturbed, uncond, scale, rescale=0.0, mode="full"):
    """pamparamm's post-CFG function: cfg + rescale_guidance(term), or snf; float64."""
    cfg, cond, perturbed = cfg.double(), cond.double(), perturbed.double()
    term = (cond - perturbed) * scale
    if mode == "snf":
        if uncond is None or not uncond.any():
            return cfg + term
        uncond = uncond.double()
        guidance = cfg - uncond
        b, c, h, w = term.shape

        def saliency(t):
            return torch.softmax(_blur3(t.abs()).reshape(b * c, h * w), dim=1).reshape(b, c, h, w)

        stacked = torch.stack([guidance, term])
        pick = torch.argmax(torch.stack([saliency(guidance), saliency(term)]), dim=0, keepdim=True)
        return uncond + torch.gather(stacked, 0, pick).squeeze(0)
    if rescale == 0:
        return cfg + term
    result = (cfg if mode == "full" else cond) + term
    factor = rescale * cond.std(dim=(1, 2, 3), keepdim=True) / result.std(dim=(1, 2, 3), keepdim=True) + 1 - rescale
    return cfg + term * factor


def _blur3(t):
    """A 3x3 gaussian of sigma 1 with reflect padding, by direct sums (pamparamm's `gaussian_blur_2d(t, 3, 1)`)."""
    weights = [math.exp(-0.5 * i * i) for i in (-1, 0, 1)]
    weights = [w / sum(weights) for w in weights]
    h, w = t.shape[-2:]

    def reflect(i, n):
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = torch.zeros_like(t)
    for a in range(3):
        rows = [reflect(i + a - 1, h) for i in range(h)]
        for b in range(3):
            cols = [reflect(j + b - 1, w) for j in range(w)]
            out += weights[a] * weights[b] * t[..., rows, :][..., cols]
    return out
