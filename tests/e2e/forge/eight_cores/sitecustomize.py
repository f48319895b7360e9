"""On a webui's PYTHONPATH (``SD_WEBUI_PYTHONPATH``), joblib reports 8 CPU cores: the Forge hosts' soft
inpainting then splits its filter into 6 jobs, as on any machine of more than 6 cores, instead of taking
``n_jobs = -1`` and returning the init image (see test_forge_neighbours.py). Only for machines of 6 cores or
fewer; nothing else reads joblib's count in a generation."""
try:
    import joblib
except ImportError:
    pass
else:
    joblib.cpu_count = lambda *args, **kwargs: 8
