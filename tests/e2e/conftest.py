"""Fixtures for end-to-end tests against a real webui (see ``harness/server.py``).

They are skipped unless ``SD_WEBUI_PATH`` names a webui checkout (``SD_WEBUI_PYTHON``
its interpreter, default ``$SD_WEBUI_PATH/venv/bin/python``), or ``SD_WEBUI_URL`` names a running
webui with this extension and the tiny checkpoints (``python harness/checkpoints.py``)
installed; tests that start webuis of their own (UI, neighbours) need ``SD_WEBUI_PATH``, and checks
that read the server's log or memory are left out against a running webui. ``SD_WEBUI_TEST_CACHE``
may name a dir in which the test checkpoints are kept between runs, ``SD_WEBUI_DATA_DIR``
a data dir to use and keep (with ``webui.log``) instead of a temp dir; the webui with the UI keeps
its own in ``$SD_WEBUI_DATA_DIR/ui``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness.server import RunningWebUI, WebUI

OWN_SERVERS = ("ui_webui", "neighbourhood", "controlnet_webui", "probe_webui", "sd21_webui")  # fixtures that start webuis of their own


FORGE_TESTS = Path(__file__).parent / "forge"  # a Forge-family webui's tests: SD_FORGE_PATH (forge/conftest.py)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: needs a real webui (SD_WEBUI_PATH or SD_WEBUI_URL)")
    config.addinivalue_line("markers", "xdist_group(name): tests sharing one webui (tests/e2e/gpu, with pytest-xdist)")


def pytest_collection_modifyitems(config, items):
    url = os.environ.get("SD_WEBUI_URL")
    for item in items:
        if FORGE_TESTS in Path(str(item.fspath)).parents:
            if not os.environ.get("SD_FORGE_PATH"):
                item.add_marker(pytest.mark.skip(reason="SD_FORGE_PATH is not set"))
            continue
        if "e2e" not in item.keywords or os.environ.get("SD_WEBUI_PATH"):
            continue
        if not url:
            item.add_marker(pytest.mark.skip(reason="neither SD_WEBUI_PATH nor SD_WEBUI_URL is set"))
        elif any(name in item.fixturenames for name in OWN_SERVERS):
            item.add_marker(pytest.mark.skip(reason="starts a webui of its own: needs SD_WEBUI_PATH"))


@pytest.fixture(scope="session")
def checkpoint_cache(tmp_path_factory):
    """Dir holding the generated test checkpoints for this session (or ``SD_WEBUI_TEST_CACHE``)."""
    cache = os.environ.get("SD_WEBUI_TEST_CACHE")
    return cache or tmp_path_factory.mktemp("sd-checkpoints")


def kept_data_dir(*sub: str):
    """``$SD_WEBUI_DATA_DIR[/sub]``, a data dir to keep after the run, or None (a temp dir) if unset."""
    root = os.environ.get("SD_WEBUI_DATA_DIR")
    return os.path.join(root, *sub) if root else None


@pytest.fixture(scope="session")
def webui(checkpoint_cache):
    """An API-only webui with this extension installed, ``sd1_tiny`` loaded; shared by the session."""
    if not os.environ.get("SD_WEBUI_PATH"):
        yield RunningWebUI(os.environ["SD_WEBUI_URL"])
        return
    with WebUI(checkpoint_cache=checkpoint_cache, data_dir=kept_data_dir()) as server:
        yield server


@pytest.fixture(scope="session")
def ui_webui(checkpoint_cache):
    """A webui with the UI as well (the API's `infotext` field and the browser need the UI's paste fields)."""
    with WebUI(checkpoint_cache=checkpoint_cache, nowebui=False, data_dir=kept_data_dir("ui")) as server:
        yield server
