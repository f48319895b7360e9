"""Stand-in of modules.shared: options, job state, the loaded model and hypernetworks."""
from types import SimpleNamespace


def default_opts():
    return SimpleNamespace(batch_cond_uncond=True, pad_cond_uncond=False, pad_cond_uncond_v0=False,
                           skip_early_cond=0.0, s_min_uncond_all=False)


opts = default_opts()
state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
sd_model = None
loaded_hypernetworks = []
