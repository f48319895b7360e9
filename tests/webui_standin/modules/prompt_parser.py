"""Stand-in of modules.prompt_parser: SDXL's conditioning dict as the webui's reconstructed batches carry it."""


class DictWithShape(dict):
    """A dict of conditionings whose `shape` is that of its "crossattn" tensor (the CFG denoiser reads it). Its
    constructor takes a shape, which it ignores: required in webui 1.8 and 1.9, optional from 1.10."""

    def __init__(self, x, shape):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape
