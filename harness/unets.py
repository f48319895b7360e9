"""Small random-weight ldm UNets (the webui's own `ldm` package, from stable-diffusion-sdkit) for tests, and
the re-initialisation every random-weight model of the tests and benchmarks needs."""
import torch

CONTEXT_DIM = 32


def randomise_zero_layers(model: torch.nn.Module) -> torch.nn.Module:
    """ldm and sgm start some output layers at zero (`zero_module`); give every all-zero Conv/Linear its
    default random initialisation, or the model outputs zeros. Draws from torch's global generator."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and not module.weight.any():
                module.reset_parameters()
    return model


def sd1_unet(seed: int = 0):
    """SD1 layout: three downsamples (middle grid latent/8), 8 heads everywhere, conv projections."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    model = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                      attention_resolutions=[4, 2], channel_mult=[1, 2, 4, 4], num_heads=8,
                      use_spatial_transformer=True, transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False)
    return randomise_zero_layers(model).eval()


def sdxl_like_unet(seed: int = 0):
    """SDXL-like layout: two downsamples (middle grid latent/4), 8-channel heads so 20 in the middle, linear projections."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    model = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                      attention_resolutions=[4], channel_mult=[1, 2, 5], num_head_channels=8,
                      use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1,
                      context_dim=CONTEXT_DIM, legacy=False)
    return randomise_zero_layers(model).eval()
