"""Self-Attention Guidance for the stable-diffusion webuis.

- `core`: the SAG equation, the attention capture, one generation's session, the parameters and the
  mask preview; plain torch, no host import.
- `ui`: what every webui of the AUTOMATIC1111 family shows and accepts in the same way: the panel,
  Settings, infotext paste, the X/Y/Z axes and the API's argument check.
- `generation`: a generation as the webui's Script sees it, from its arguments to the session on `p`.
- `hosts`: one adapter per host, the only code that reaches into a host's sampler and UNet.
"""
