"""Small random-weight ldm UNets (the webui's own `ldm` package, from stable-diffusion-sdkit) for tests."""
import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel

CONTEXT_DIM = 32


def _randomise_zero_layers(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ldm starts some output layers at zero (zero_module); give them random weights or the UNet outputs zeros."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def sd1_unet(seed: int = 0) -> UNetModel:
    """SD1 layout: three downsamples (middle grid latent/8), 8 heads everywhere, conv projections."""
    torch.manual_seed(seed)
    model = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                      attention_resolutions=[4, 2], channel_mult=[1, 2, 4, 4], num_heads=8,
                      use_spatial_transformer=True, transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False)
    return _randomise_zero_layers(model, seed)


def sdxl_like_unet(seed: int = 0) -> UNetModel:
    """SDXL-like layout: two downsamples (middle grid latent/4), 8-channel heads so 20 in the middle, linear projections."""
    torch.manual_seed(seed)
    model = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                      attention_resolutions=[4], channel_mult=[1, 2, 5], num_head_channels=8,
                      use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1,
                      context_dim=CONTEXT_DIM, legacy=False)
    return _randomise_zero_layers(model, seed)


def middle_attention(unet: UNetModel):
    transformer = unet.middle_block[1]
    return transformer, transformer.transformer_blocks[0].attn1
