"""Host adapters: each one finds the UNet its host runs, feeds a generation's session the rows of each
sampling step and runs SAG's extra pass the host's way. `a1111`: AUTOMATIC1111's webui 1.8-1.10.

What `sag_ext.generation` asks of an adapter: `unsupported_reason()` (why SAG cannot run on the
model in use, or None), `self_attention_keys(x)` (what the host's attention feeds `to_k`),
`release_model_hooks()` (remove a capture a failed generation left), and `register_callbacks()`.
"""
