"""Stand-in of modules.sd_samplers_common: the interrupt exception and the sampling launcher."""
from modules import shared


class InterruptedException(BaseException):
    pass


def launch_sampling(loop, denoiser, x):
    """Runs a sampler loop; an interrupt returns the last latent, as the host's launch_sampling does."""
    denoiser.last_latent = x
    try:
        return loop()
    except InterruptedException:
        return denoiser.last_latent
    finally:
        shared.state.sampling_step = 0
