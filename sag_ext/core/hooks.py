"""What the methods' torch hooks share: each set marks the module it belongs to, so that a later generation
(or an unload) finds and removes hooks a failed generation left."""
import torch


class MarkedHooks:
    """Hooks whose owner object sits on one module under `ATTRIBUTE`; subclasses define `remove()`."""

    ATTRIBUTE = ""

    @classmethod
    def attached(cls, module: torch.nn.Module):
        """The hooks attached to `module`, if any."""
        return getattr(module, cls.ATTRIBUTE, None)

    @classmethod
    def release(cls, module: torch.nn.Module) -> None:
        """Remove whatever hooks of this kind (ours or stale ones) are attached to `module`."""
        hooks = cls.attached(module)
        if hooks is not None:
            hooks.remove()
