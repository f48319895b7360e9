"""Stand-in of modules.sd_unet: non-None when an alternative UNet (e.g. TensorRT) replaces the PyTorch one."""
current_unet = None
