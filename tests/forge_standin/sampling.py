"""Stand-in of Forge's backend/sampling/sampling_function.py: calc_cond_uncond_batch and the CFG step."""
import math

import torch

COND, UNCOND = 0, 1


def repeat_to_batch_size(tensor, batch_size):
    """Forge's `backend.sampling.condition.repeat_to_batch_size`: a conditioning tiled (or cut) to the rows of x."""
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.ndim - 1))[:batch_size]
    return tensor


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    """(cond prediction, uncond prediction) over the rows of x_in each. Every cond entry is a chunk of those
    rows, its conditioning tiled to them (`process_cond`); the chunks that can share a call with the first
    one left (same text shape) run in reverse list order (uncond first), as many per UNet call as
    `model.max_rows` allows; the others (a longer prompt) after."""
    out_cond, out_uncond = torch.zeros_like(x_in), torch.zeros_like(x_in)
    count_cond, count_uncond = torch.full_like(x_in, 1e-37), torch.full_like(x_in, 1e-37)
    to_run = [(entry, COND) for entry in cond] + [(entry, UNCOND) for entry in (uncond or [])]
    while to_run:
        first = to_run[0][0]["crossattn"].shape
        to_batch = [index for index, (entry, _) in enumerate(to_run) if entry["crossattn"].shape == first][::-1]
        fits = max(1, model.max_rows // x_in.shape[0])
        to_batch = to_batch[:fits]
        picked = [to_run[index] for index in to_batch]
        for index in sorted(to_batch, reverse=True):
            to_run.pop(index)
        chunks = [kind for _, kind in picked]
        rows = x_in.shape[0]
        transformer_options = {**model_options.get("transformer_options", {}), "cond_or_uncond": chunks[:],
                               "sigmas": timestep,
                               "cond_mark": torch.tensor([kind for kind in chunks for _ in range(rows)]).to(timestep),
                               "cond_indices": [i * rows + r for i, kind in enumerate(chunks) if kind == COND for r in range(rows)],
                               "uncond_indices": [i * rows + r for i, kind in enumerate(chunks) if kind == UNCOND for r in range(rows)]}
        c = {"c_crossattn": torch.cat([repeat_to_batch_size(entry["crossattn"], rows) for entry, _ in picked]),
             "transformer_options": transformer_options}
        input_x, timestep_ = torch.cat([x_in] * len(chunks)), torch.cat([timestep] * len(chunks))
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {
                "input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": chunks})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        output = output.chunk(len(chunks))
        for (entry, kind), out in zip(picked, output):
            weight = entry.get("strength", 1.0)
            if kind == COND:
                out_cond += out * weight
                count_cond += weight
            else:
                out_uncond += out * weight
                count_uncond += weight
    return out_cond / count_cond, out_uncond / count_uncond


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options):
    uncond_ = None if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization") else uncond
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)
    return cfg_result
