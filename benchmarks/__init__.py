"""Benchmarks: SAG, PAG and SEG at the UNet level (`bench_sag`) and in real webuis (`webui_walltime`, `webui_gpu`,
`guidance_gpu`)."""
