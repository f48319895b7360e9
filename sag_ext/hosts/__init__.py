"""Host adapters: each one finds the UNet its host runs, feeds a generation's session the rows of each
sampling step and runs SAG's extra pass the host's way. `a1111`: AUTOMATIC1111's webui 1.8-1.10;
`forge`: the Forge family (Forge, Forge Neo, reForge, Forge Classic).

What `sag_ext.generation` and the Script ask of an adapter: `unsupported_reason()` (why SAG cannot run on
the model in use, or None), `release_model_hooks()` (remove a capture a failed generation left),
`before_sampling(p)` (Script.process_before_every_sampling), `register_callbacks()`, and
`reads_forge_infotext` (whether Forge's `sag_*` infotext keys restore ours).
"""


def detect():
    """The adapter for the webui this runs in, recognised by what it has: a Forge-family sampling module
    with its cond/uncond batch function, or else A1111's modules."""
    from . import a1111, forge

    try:
        forge.batch_function()
    except ImportError:
        return a1111.adapter()
    return forge.adapter()
