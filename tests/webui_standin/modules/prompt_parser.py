"""Stand-in of modules.prompt_parser: SDXL's conditioning dict as the webui's reconstructed batches carry it."""


class DictWithShape(dict):
    """A dict of conditionings whose `shape` is that of its "crossattn" tensor (the CFG denoiser reads it)."""

    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape
