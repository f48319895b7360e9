"""Tiny random-weight SD1 and SDXL checkpoints for the webui e2e tests.

Each checkpoint is ``<name>.safetensors`` with a same-named ``<name>.yaml`` beside it,
which the webui uses instead of guessing a config. The yaml files follow the webui's
own ``v1-inference.yaml`` and sgm's ``sd_xl_base.yaml`` with small sizes:

* ``sd1_tiny``: ldm UNet, 4 levels (middle block at latent/8), 8 heads everywhere,
  64-wide CLIP text model (:data:`tokenizer_cache.TINY_CLIP_REPO`).
* ``sd1_wide``: ``sd1_tiny`` with the UNet at SD1.5's widths (model_channels 320), the
  only layout whose UNet takes a ControlNet (ControlNet assumes SD1.5's widths). Not made
  by default: its file is 3.4 GB.
* ``sd15``: every part at SD1.5's sizes (UNet, CLIP ViT-L/14 text model, VAE), stored in float16
  (2 GB): the Forge hosts recognise a model by its sizes and load nothing smaller.
* ``sd21``: every part at SD2.1 768-v's sizes (UNet with 64-channel heads, linear transformers and a
  1024-wide context, OpenCLIP ViT-H/14 text tower, VAE), v-prediction, float16 (2.6 GB): for the Forge
  hosts, which recognise it by its sizes and its v-prediction by the spread of one layer norm's bias.
* ``sdxl``: every part at SDXL's sizes (``sdxl_full``'s UNet with a 2048-wide context and 2816 ADM inputs,
  CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers, the VAE), float16 (7 GB): for the Forge hosts.
* ``sdxl_full``: ``sdxl_tiny`` with the UNet at SDXL's sizes (model_channels 320, channel_mult
  [1, 2, 4], transformer depths [0, 2, 10], 64-channel heads), stored in float16 (5 GB): for the GPU
  runs (``tests/e2e/gpu``). Its cross-attention takes the tiny text towers' 320-wide context.
* ``sdxl_tiny``: sgm UNet, channel_mult [1, 2, 5] (middle block at latent/4 with
  20 heads of 8 channels), linear transformers of depth 1/2, tiny CLIP + open_clip
  ``ViT-S-32-alt`` text towers (context 64 + 256 = 320, pooled 256).

Weights are made by the repositories' own classes, so this file runs in two roles:
:func:`make_checkpoints` (any interpreter) starts it as a script under the webui's
interpreter, which builds the models and writes the files. Layers that ldm/sgm
initialise to zero (``zero_module``) are re-initialised, and the UNet's and VAE's
output convolutions are rescaled so outputs have a sane magnitude.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
from pathlib import Path

try:
    from .tokenizer_cache import CLIP_L_REPO, TINY_CLIP_REPO, TINY_CLIP_TEXT, text_config
except ImportError:  # run as a script
    from tokenizer_cache import CLIP_L_REPO, TINY_CLIP_REPO, TINY_CLIP_TEXT, text_config

LAYOUTS = ("sd1_tiny", "sdxl_tiny")  # made by default
GENERATOR_VERSION = 2  # bump when the weights made for the same config change
STAMP_KEY = "sd_webui_sag_test"

OPEN_CLIP_ARCH = "ViT-S-32-alt"  # smallest open_clip text tower: width 256, 10 layers, embed_dim 256
OPEN_CLIP_WIDTH = 256
SDXL_OPEN_CLIP_ARCH, SDXL_OPEN_CLIP_WIDTH = "ViT-bigG-14", 1280  # SDXL's second text tower
SD2_OPEN_CLIP_ARCH, SD2_OPEN_CLIP_WIDTH = "ViT-H-14", 1024  # SD2's text tower
# the hosts take an SD2 model for v-prediction when this bias spreads (std > 0.09), as trained 768-v models do
SD2_V_MARKER = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
CLIP_WIDTH = TINY_CLIP_TEXT["hidden_size"]
CLIP_L_WIDTH = text_config()["hidden_size"]
ADM_OUTDIM = 256  # per size/crop component, as in SDXL

_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                 "ch": 32, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def sd1_config(model_channels: int = 32, full_size: bool = False) -> dict:
    """Model config (yaml content) of ``sd1_tiny`` (``sd1_wide`` with ``model_channels=320``, ``sd15`` with
    ``full_size``)."""
    if full_size:
        model_channels = 320
    vae = dict(_VAE_DDCONFIG, ch=128, num_res_blocks=2) if full_size else dict(_VAE_DDCONFIG)
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64, "channels": 4,
        "cond_stage_trainable": False, "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
        "scale_factor": 0.18215, "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": model_channels,
            "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
            "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1,
            "context_dim": CLIP_L_WIDTH if full_size else CLIP_WIDTH, "use_checkpoint": False, "legacy": False}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss", "ddconfig": vae,
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                              "params": {"version": CLIP_L_REPO if full_size else TINY_CLIP_REPO}},
    }}}


def sd21_config() -> dict:
    """Model config (yaml content) of ``sd21``: the SD2.1 768-v model (stablediffusion's ``v2-inference-v.yaml``)
    without pretrained text weights."""
    cfg = sd1_config(full_size=True)
    params = cfg["model"]["params"]
    params["parameterization"] = "v"
    params["unet_config"]["params"].update(num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                                           context_dim=SD2_OPEN_CLIP_WIDTH)
    params["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder", "params": {
        "arch": SD2_OPEN_CLIP_ARCH, "version": None, "freeze": True, "layer": "penultimate"}}
    return cfg


def sdxl_config(full_size: bool = False, real_text: bool = False) -> dict:
    """Model config (yaml content) of ``sdxl_tiny`` (``sdxl_full`` with ``full_size``, ``sdxl`` with both)."""
    open_clip_arch, open_clip_width = (SDXL_OPEN_CLIP_ARCH, SDXL_OPEN_CLIP_WIDTH) if real_text else (OPEN_CLIP_ARCH, OPEN_CLIP_WIDTH)
    clip_width = CLIP_L_WIDTH if real_text else CLIP_WIDTH
    vae = dict(_VAE_DDCONFIG, ch=128, num_res_blocks=2) if real_text else dict(_VAE_DDCONFIG)
    size_embedder = {"target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
                     "params": {"outdim": ADM_OUTDIM}, "is_trainable": False}
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": {
        "scale_factor": 0.13025, "disable_first_stage_autocast": True,
        "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "params": {
            "num_idx": 1000,
            "weighting_config": {"target": "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"},
            "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
            "discretization_config": {
                "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}}},
        "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "adm_in_channels": open_clip_width + 6 * ADM_OUTDIM, "num_classes": "sequential",
            "use_checkpoint": False, "in_channels": 4, "out_channels": 4, "model_channels": 320 if full_size else 32,
            "attention_resolutions": [4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 4] if full_size else [1, 2, 5],
            "num_head_channels": 64 if full_size else 8, "use_spatial_transformer": True,
            "use_linear_in_transformer": True, "transformer_depth": [0, 2, 10] if full_size else [1, 1, 2],
            "context_dim": clip_width + open_clip_width,
            "spatial_transformer_attn_type": "softmax-xformers", "legacy": False}},
        "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
            {"is_trainable": False, "input_key": "txt",
             "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
             "params": {"version": CLIP_L_REPO if real_text else TINY_CLIP_REPO, "layer": "hidden", "layer_idx": -2}},
            {"is_trainable": False, "input_key": "txt",
             "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
             "params": {"arch": open_clip_arch, "version": None, "freeze": True, "layer": "penultimate",
                        "always_return_pooled": True, "legacy": False}},
            dict(size_embedder, input_key="original_size_as_tuple"),
            dict(size_embedder, input_key="crop_coords_top_left"),
            dict(size_embedder, input_key="target_size_as_tuple"),
        ]}},
        "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss",
            "ddconfig": dict(vae, attn_type="vanilla-xformers"),
            "lossconfig": {"target": "torch.nn.Identity"}}},
    }}}


def ssd1b_config() -> dict:
    """``ssd1b``: SSD-1B's layout at its sizes, SDXL's with transformers of depth 0, 2 and 4 down the levels
    and a middle block of one ResBlock (no transformer there: a model SAG cannot hook), which the Forge
    hosts detect as SSD-1B; written from SDXL's code with its middle block cut (see `_build_sdxl`)."""
    cfg = sdxl_config(full_size=True, real_text=True)
    cfg["model"]["params"]["network_config"]["params"].update(transformer_depth=[0, 2, 4], transformer_depth_middle=1)
    return cfg


CONFIGS = {"sd1_tiny": sd1_config, "sdxl_tiny": sdxl_config, "sd1_wide": lambda: sd1_config(model_channels=320),
           "sdxl_full": lambda: sdxl_config(full_size=True), "sd15": lambda: sd1_config(full_size=True),
           "sdxl": lambda: sdxl_config(full_size=True, real_text=True), "sd21": sd21_config, "ssd1b": ssd1b_config}
HALF_LAYOUTS = ("sdxl_full", "sd15", "sdxl", "sd21", "ssd1b")  # stored in float16
WITHOUT_MIDDLE_TRANSFORMER = ("ssd1b",)


def webui_pythonpath(*first) -> str:
    """A PYTHONPATH of ``first`` and then ``SD_WEBUI_PYTHONPATH`` (the packages the webui's interpreter lacks)."""
    return os.pathsep.join([*map(str, first), *filter(None, [os.environ.get("SD_WEBUI_PYTHONPATH")])])


def make_checkpoints(out_dir: str | os.PathLike, python: str, webui_path: str | os.PathLike,
                     *, layouts=LAYOUTS, seed: int = 0, timeout: float = 600) -> list[Path]:
    """Write ``<layout>.safetensors`` and ``<layout>.yaml`` into ``out_dir``; return the checkpoint paths.

    ``python`` is the webui venv's interpreter, ``webui_path`` the webui checkout (for its
    ``repositories/``). Files made by the same generator version, config and seed are reused.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.safetensors" for name in layouts]
    todo = [name for name, p in zip(layouts, paths, strict=True) if not _is_current(p, name, seed)]
    if todo:
        repos = Path(webui_path) / "repositories"
        env = dict(os.environ, PYTHONPATH=webui_pythonpath(repos / "stable-diffusion-stability-ai",
                                                           repos / "generative-models"))
        env["OMP_NUM_THREADS"] = os.environ.get("SAG_CHECKPOINT_THREADS", "1")  # 1: no OpenMP spinning on busy cores
        proc = subprocess.run([python, str(Path(__file__)), str(out_dir), *todo, "--seed", str(seed)],
                              env=env, timeout=timeout, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"checkpoint generation failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return paths


def _stamp(name: str, seed: int) -> str:
    """What a checkpoint was made from; stored in its safetensors metadata."""
    return json.dumps({"generator": GENERATOR_VERSION, "seed": seed, "config": CONFIGS[name]()}, sort_keys=True)


def _is_current(path: Path, name: str, seed: int) -> bool:
    """Whether ``path`` (and its yaml) exist and were made from :func:`_stamp` ``(name, seed)``."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    except (OSError, ValueError, struct.error):
        return False
    return path.with_suffix(".yaml").exists() and header.get("__metadata__", {}).get(STAMP_KEY) == _stamp(name, seed)


# --------------------------------------------------------------------------------------------
# Everything below runs under the webui's interpreter (torch, ldm, sgm, open_clip, transformers).

def _rescale_output(layer, run, target_std: float) -> None:
    """Scale ``layer`` (the last conv) so that ``run()`` returns values of std ``target_std``."""
    import torch
    with torch.no_grad():
        std = run().std().item()
        layer.weight.mul_(target_std / std)
        layer.bias.mul_(target_std / std)


def _text_models(prefix_clip: str, sizes=TINY_CLIP_TEXT):
    """HF CLIP text model of ``sizes`` (default tiny) and its state dict under ``prefix_clip``.

    Its final layer norm gets random weights (initialised, they are 1 and 0): with them the mean of
    every output vector is 0 to rounding, and the webui's prompt emphasis, which rescales the
    embedding by (mean before / mean after), turns some prompts into NaN.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel
    model = CLIPTextModel(CLIPTextConfig(**text_config(**sizes)))
    with torch.no_grad():
        model.text_model.final_layer_norm.weight.normal_(1.0, 0.2)
        model.text_model.final_layer_norm.bias.normal_(0.1, 0.2)
    return {prefix_clip + k: v for k, v in model.state_dict().items()}


def _unet_and_vae(unet_cfg, vae_cfg, context_dim, *, adm=None, scale_factor=1.0, middle_transformer=True):
    """Instantiate UNet and VAE from their configs; return ``{"model.diffusion_model.": sd, ...}``. Without
    `middle_transformer`, the UNet's middle block keeps only its first ResBlock."""
    import torch
    from ldm.util import instantiate_from_config
    from unets import randomise_zero_layers  # run as a script: this folder is on sys.path

    unet = instantiate_from_config(unet_cfg).eval()
    if not middle_transformer:
        unet.middle_block = unet.middle_block[:1]
    vae_cfg = copy.deepcopy(vae_cfg)
    vae_cfg["params"]["ddconfig"].pop("attn_type", None)  # no xformers here; the webui does the same
    vae = instantiate_from_config(vae_cfg).eval()
    randomise_zero_layers(unet)
    randomise_zero_layers(vae)

    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([999, 500])
    ctx = torch.randn(2, 77, context_dim)
    kwargs = {"y": torch.randn(2, adm)} if adm else {}
    _rescale_output(unet.out[-1], lambda: unet(x, t, context=ctx, **kwargs), 1.0)
    _rescale_output(vae.decoder.conv_out, lambda: vae.decode(torch.randn(1, 4, 16, 16) / scale_factor), 0.5)
    with torch.no_grad():
        out = unet(x, t, context=ctx, **kwargs)
        assert torch.isfinite(out).all() and out.std() > 0.1, "UNet output is degenerate"
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    return sd


def _build_sd1(cfg):
    p = cfg["model"]["params"]
    context_dim = p["unet_config"]["params"]["context_dim"]
    sd = _unet_and_vae(p["unet_config"], p["first_stage_config"], context_dim, scale_factor=p["scale_factor"])
    sd.update(_text_models("cond_stage_model.transformer.", {} if context_dim == CLIP_L_WIDTH else TINY_CLIP_TEXT))
    return sd


def _build_sd2(cfg):
    import torch
    from ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder
    p = cfg["model"]["params"]
    context_dim = p["unet_config"]["params"]["context_dim"]
    sd = _unet_and_vae(p["unet_config"], p["first_stage_config"], context_dim, scale_factor=p["scale_factor"])
    if p.get("parameterization") == "v":
        with torch.no_grad():
            sd["model.diffusion_model." + SD2_V_MARKER].normal_(0.0, 0.2)
    embedder = FrozenOpenCLIPEmbedder(device="cpu", **p["cond_stage_config"]["params"])
    with torch.no_grad():  # as in _text_models: the hosts' emphasis divides by the mean of the normed output
        embedder.model.ln_final.weight.normal_(1.0, 0.2)
        embedder.model.ln_final.bias.normal_(0.1, 0.2)
    sd.update({"cond_stage_model.model." + k: v for k, v in embedder.model.state_dict().items()})
    return sd


def _build_sdxl(cfg, middle_transformer=True):
    import sgm.modules.encoders.modules as enc
    p = cfg["model"]["params"]
    net = p["network_config"]["params"]
    sd = _unet_and_vae(p["network_config"], p["first_stage_config"], net["context_dim"],
                       adm=net["adm_in_channels"], scale_factor=p["scale_factor"],
                       middle_transformer=middle_transformer)
    sd.update(_text_models("conditioner.embedders.0.transformer.",
                           {} if net["context_dim"] == CLIP_L_WIDTH + SDXL_OPEN_CLIP_WIDTH else TINY_CLIP_TEXT))
    open_clip_params = p["conditioner_config"]["params"]["emb_models"][1]["params"]
    embedder = enc.FrozenOpenCLIPEmbedder2(device="cpu", **open_clip_params)
    sd.update({"conditioner.embedders.1.model." + k: v for k, v in embedder.model.state_dict().items()})
    return sd


def _write(name: str, out_dir: Path, seed: int) -> Path:
    import torch
    import yaml
    from safetensors.torch import save_file

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(seed)
    cfg = CONFIGS[name]()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a GPU makes the full sizes in seconds
        if name.startswith(("sdxl", "ssd1b")):
            sd = _build_sdxl(cfg, middle_transformer=name not in WITHOUT_MIDDLE_TRANSFORMER)
        else:
            sd = (_build_sd2 if name.startswith("sd2") else _build_sd1)(cfg)
    dtype = torch.float16 if name in HALF_LAYOUTS else torch.float32
    sd = {k: v.detach().to("cpu", dtype).contiguous().clone() if v.is_floating_point() else v.cpu().contiguous().clone()
          for k, v in sd.items()}
    path = out_dir / f"{name}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt", STAMP_KEY: _stamp(name, seed)})
    path.with_suffix(".yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="Write tiny random SD checkpoints (run with the webui's python).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("layouts", nargs="*", help=f"default: {' '.join(LAYOUTS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.layouts or LAYOUTS:
        print(_write(name, args.out_dir, args.seed))


if __name__ == "__main__":
    main()
