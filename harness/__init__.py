"""Machinery shared by the tests and the benchmarks (never loaded by a webui):

- `unets`: small random-weight ldm UNets, and the re-initialisation of ldm's zero-initialised layers;
- `diffusion`: Stable Diffusion's noise schedule and k-diffusion's denoiser around an eps model;
- `server`: a real webui started and stopped with a private data dir, offline, on 127.0.0.1;
- `checkpoints`, `tokenizer_cache`, `hypernetwork`, `controlnet`: the random-weight models and offline
  files such a webui loads.

Import it with the repository root on `sys.path` (pytest and the benchmarks put it there).
"""
