"""Fixtures for the tests against a real Forge-family webui (Forge, Forge Neo, reForge, Forge Classic).

Skipped unless ``SD_FORGE_PATH`` names such a checkout with its ``repositories/`` in place and a venv
(``SD_FORGE_PYTHON``, default ``$SD_FORGE_PATH/venv/bin/python``) that also has pytest and, for the test
checkpoint's writer, ``stable-diffusion-sdkit`` installed with ``--no-deps``. The webui runs on the CPU,
offline, bound to 127.0.0.1, with a private data dir and the random-weight full-size ``sd15`` checkpoint
(kept in ``SD_WEBUI_TEST_CACHE`` between runs if set). The fixtures are named as tests/e2e's, so the
host-independent tests of tests/e2e run here too (see test_forge_shared.py).
"""
from __future__ import annotations

import pytest
from harness.server import ForgeWebUI

from e2e.conftest import kept_data_dir


@pytest.fixture(scope="session")
def webui(checkpoint_cache):
    """An API-only Forge-family webui with this extension installed, ``sd15`` loaded."""
    with ForgeWebUI(checkpoint_cache=checkpoint_cache, data_dir=kept_data_dir("forge")) as server:
        yield server


@pytest.fixture(scope="session")
def ui_webui(checkpoint_cache):
    """The same with the UI (the API's `infotext` field reads the UI's paste fields)."""
    with ForgeWebUI(checkpoint_cache=checkpoint_cache, nowebui=False, data_dir=kept_data_dir("forge-ui")) as server:
        yield server
