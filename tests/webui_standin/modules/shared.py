"""Stand-in of modules.shared: options (with settings registration), job state, the loaded model."""
from types import SimpleNamespace


class OptionInfo:
    """webui 1.10's OptionInfo, as an extension's settings use it (`category_id` exists since 1.7)."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False, category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.category_id, self.comment_after = section, category_id, comment_after

    def needs_reload_ui(self):
        self.comment_after += " (requires Reload UI)"
        return self


def default_opts():
    data_labels = {}
    return SimpleNamespace(batch_cond_uncond=True, pad_cond_uncond=False, pad_cond_uncond_v0=False,
                           skip_early_cond=0.0, s_min_uncond_all=False, data_labels=data_labels,
                           add_option=data_labels.__setitem__)


opts = default_opts()
state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
sd_model = None
