"""Start and stop a real AUTOMATIC1111 webui (v1.10.x) or Forge-family webui for end-to-end tests.

The webui checkout and its interpreter come from the environment:

* ``SD_WEBUI_PATH``: a webui checkout with its ``repositories/`` in place;
* ``SD_WEBUI_PYTHON``: its venv's python (default ``$SD_WEBUI_PATH/venv/bin/python``);
* ``SD_WEBUI_PYTHONPATH``: packages that interpreter needs on its ``PYTHONPATH`` (the GPU runner's
  wheels, ``tests/e2e/gpu``), if any;
* ``SD_FORGE_PATH`` / ``SD_FORGE_PYTHON``: the same for a Forge-family webui (:class:`ForgeWebUI`);
  ``SD_FORGE_ARGS``: further launch flags it needs.

:class:`WebUI` makes a private ``--data-dir`` holding ``extensions/sd-webui-sag`` (a
symlink to this repository), the tiny checkpoints of :mod:`checkpoints`, an offline
Hugging Face cache (:mod:`tokenizer_cache`) and a ``config.json`` with live previews
off. It runs ``launch.py`` on the CPU (or, with ``device="cuda"``, on the GPU with the webui's
default half precision and NaN check), bound to 127.0.0.1 on a free port, in its own
process group, logging to ``<data-dir>/webui.log``. Nothing is written into the
webui checkout except Python's bytecode caches.

Example::

    with WebUI() as webui:
        result = webui.post("/sdapi/v1/txt2img", {"prompt": "a cat", "steps": 4})
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    from . import checkpoints, hypernetwork, tokenizer_cache
except ImportError:  # imported as a top-level module
    import checkpoints
    import hypernetwork
    import tokenizer_cache

REPO_ROOT = Path(__file__).resolve().parents[1]
EXTENSION_NAME = "sd-webui-sag"

#: Options written to ``config.json``: no live previews (SDXL would want vaeapprox
#: files), no browser, nothing saved to disk unless a test asks for it.
TEST_OPTIONS = {
    "live_previews_enable": False,
    "show_progress_every_n_steps": -1,
    "auto_launch_browser": "Disable",
    "samples_save": False,
    "grid_save": False,
    "sd_checkpoint_cache": 0,
}

BASE_ARGS = [
    "--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test", "--skip-version-check",
    "--skip-python-version-check", "--api", "--no-download-sd-model", "--do-not-download-clip",
    "--server-name", "127.0.0.1",
]
DEVICE_ARGS = {"cpu": ["--use-cpu", "all", "--no-half", "--precision", "full", "--disable-nan-check"], "cuda": []}


def webui_from_env() -> tuple[Path, str]:
    """``(SD_WEBUI_PATH, SD_WEBUI_PYTHON)``; raises ``KeyError`` if ``SD_WEBUI_PATH`` is unset."""
    path = Path(os.environ["SD_WEBUI_PATH"]).resolve()
    python = os.environ.get("SD_WEBUI_PYTHON") or str(path / "venv" / "bin" / "python")
    return path, python


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bpe_vocab_path(python: str) -> str:
    """Path of open_clip's BPE vocabulary in ``python``'s environment (without importing torch)."""
    code = ("import importlib.util, os; spec = importlib.util.find_spec('open_clip'); "
            "print(os.path.join(spec.submodule_search_locations[0], 'bpe_simple_vocab_16e6.txt.gz'))")
    env = dict(os.environ, PYTHONPATH=checkpoints.webui_pythonpath())
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, env=env).stdout.strip()


def prepare_data_dir(data_dir: Path, webui_path: Path, python: str, *, with_extension: bool = True,
                     extra_extensions=(), checkpoint_cache: Path | None = None, options: dict | None = None,
                     layouts=checkpoints.LAYOUTS) -> None:
    """Fill ``data_dir`` with extensions/, tmp/, models/Stable-diffusion/ (the checkpoints ``layouts``),
    models/hypernetworks/ (:mod:`hypernetwork`), hf/ and config.json.

    ``extra_extensions`` are directories of other extensions (checked out by whoever runs the tests,
    never part of this repository) to link into extensions/ as well.

    Checkpoints are generated in ``checkpoint_cache`` (reused across runs) and symlinked,
    or generated directly into the data dir when no cache is given.
    """
    ckpt_dir = data_dir / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "extensions").mkdir(exist_ok=True)
    (data_dir / "tmp").mkdir(exist_ok=True)  # Forge Neo's gallery writes there (its `temp_dir`) and never makes it
    if with_extension:
        link = data_dir / "extensions" / EXTENSION_NAME
        if not link.is_symlink():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
    for extension in map(Path, extra_extensions):
        link = data_dir / "extensions" / extension.name
        if not link.is_symlink():
            link.symlink_to(extension.resolve(), target_is_directory=True)

    made = checkpoints.make_checkpoints(checkpoint_cache or ckpt_dir, python, webui_path, layouts=layouts)
    if checkpoint_cache:
        for ckpt in made:
            for src in (ckpt, ckpt.with_suffix(".yaml")):
                dst = ckpt_dir / src.name
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                dst.symlink_to(src.resolve())

    hypernetwork.write_hypernetwork(data_dir / "models" / "hypernetworks")

    if not (data_dir / "hf" / "hub" / "version.txt").exists():
        tokenizer_cache.build_tokenizer_cache(data_dir / "hf", bpe_vocab_path(python))

    config = data_dir / "config.json"
    current = json.loads(config.read_text()) if config.exists() else {}
    config.write_text(json.dumps({**current, **TEST_OPTIONS, **(options or {})}, indent=2))


STARTED = "Startup time:"  # the webui's last startup line, after the API and the app_started callbacks


class WebUIError(RuntimeError):
    """The webui failed to start or answered an HTTP error."""


class WebUIClient:
    """The HTTP side of a webui: JSON requests and checkpoint changes, at ``base_url``."""

    base_url: str
    checkpoint: str | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None  # the server's log, when this harness started the server

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the webui's log ("" when it is not ours to read)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    def use_checkpoint(self, name: str) -> None:
        """Load checkpoint ``name`` (e.g. ``"sdxl_tiny"``) and make it the default for later requests."""
        self.post("/sdapi/v1/options", {"sd_model_checkpoint": name})
        current = self.get("/sdapi/v1/options")["sd_model_checkpoint"]  # a title: "name.safetensors [hash]"
        if current != name and not current.startswith((name + ".", name + " [")):
            # the webui only logs a failed load and keeps the old model
            raise WebUIError(f"could not load {name!r} (still {current!r}):\n{self.log_tail()}")
        self.checkpoint = name

    def request(self, method: str, path: str, payload=None, timeout: float = 600.0):
        """Send a JSON request; return the decoded JSON answer (raise :class:`WebUIError` on HTTP errors)."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            raise WebUIError(f"{method} {path}: HTTP {e.code}: {e.read()[:2000]!r}") from None
        return json.loads(body) if body else None

    def get(self, path: str, timeout: float = 600.0):
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, payload=None, timeout: float = 600.0):
        return self.request("POST", path, payload if payload is not None else {}, timeout=timeout)


class RunningWebUI(WebUIClient):
    """A webui started by someone else (``SD_WEBUI_URL``) with this extension and the tiny checkpoints installed."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")


class WebUI(WebUIClient):
    """One webui process with a private data dir; a context manager.

    :param webui_path: webui checkout (default: ``SD_WEBUI_PATH``).
    :param python: its interpreter (default: ``SD_WEBUI_PYTHON`` or ``<webui>/venv/bin/python``).
    :param checkpoint: checkpoint loaded at start, ``"sd1_tiny"`` or ``"sdxl_tiny"``.
    :param nowebui: API only (``--nowebui``); ``False`` also builds and serves the Gradio UI.
    :param with_extension: link this repository into ``extensions/``; ``False`` runs a bare webui.
    :param extra_extensions: directories of other extensions to link into ``extensions/`` too.
    :param extra_args: further ``launch.py`` arguments, e.g. ``["--disable-extra-extensions"]``.
    :param data_dir: data dir to use (kept); default a new temp dir, deleted by :meth:`stop`.
    :param checkpoint_cache: dir in which checkpoints are generated once and reused.
    :param options: extra ``config.json`` options.
    :param layouts: the test checkpoints to provide (:mod:`checkpoints` layouts).
    :param device: ``"cpu"`` (full precision, NaN check off) or ``"cuda"`` (the webui's defaults there).
    :param startup_timeout: seconds to wait for the API to answer and the model to load.
    """

    def __init__(self, webui_path=None, python=None, *, checkpoint: str = "sd1_tiny", nowebui: bool = True,
                 with_extension: bool = True, extra_extensions=(), extra_args=(), data_dir=None, checkpoint_cache=None,
                 options: dict | None = None, layouts=checkpoints.LAYOUTS, device: str = "cpu",
                 startup_timeout: float = 600.0):
        if webui_path is None:
            webui_path, env_python = webui_from_env()
            python = python or env_python
        self.webui_path = Path(webui_path).resolve()
        self.python = python or str(self.webui_path / "venv" / "bin" / "python")
        self.checkpoint = checkpoint
        self.nowebui = nowebui
        self.with_extension = with_extension
        self.extra_extensions = list(extra_extensions)
        self.extra_args = list(extra_args)
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else None
        self.checkpoint_cache = Path(checkpoint_cache) if checkpoint_cache else None
        self.options = options
        self.layouts = tuple(layouts)
        self.device = device
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "webui.log"

    def launch_flags(self) -> list[str]:
        """The host's start-up flags: offline, API, and the device's."""
        return [*BASE_ARGS, *DEVICE_ARGS[self.device]]

    def command(self) -> list[str]:
        """The ``launch.py`` command line."""
        ckpt_dir = self.data_dir / "models" / "Stable-diffusion"
        args = [self.python, str(self.webui_path / "launch.py"), *self.launch_flags(), "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--ckpt-dir", str(ckpt_dir),
                "--ckpt", str(ckpt_dir / f"{self.checkpoint}.safetensors")]
        return args + (["--nowebui"] if self.nowebui else []) + self.extra_args

    def environment(self) -> dict[str, str]:
        """Process environment: offline Hugging Face cache, no inherited webui/python settings."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("COMMANDLINE_ARGS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        if os.environ.get("SD_WEBUI_PYTHONPATH"):
            env["PYTHONPATH"] = checkpoints.webui_pythonpath()
        env.update(HF_HOME=str(self.data_dir / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl when cores are shared
        return env

    def start(self) -> WebUI:
        """Prepare the data dir, start the webui and wait until its API answers."""
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="sag-webui-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        prepare_data_dir(self.data_dir, self.webui_path, self.python, with_extension=self.with_extension,
                         extra_extensions=self.extra_extensions, checkpoint_cache=self.checkpoint_cache, options=self.options,
                         layouts=self.layouts)
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.webui_path, env=self.environment(),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WebUIError(f"webui exited with {self.process.returncode}:\n{self.log_tail()}")
            # No request before the webui says it started: with the UI, Gradio serves the app before the
            # API adds its middleware, and a request in between makes that fail ("Cannot add middleware
            # after an application has started").
            if STARTED not in self.log_path.read_text(errors="replace"):
                time.sleep(1)
                continue
            try:
                self.get("/sdapi/v1/sd-models", timeout=5)
                break
            except (OSError, WebUIError):
                time.sleep(1)
        else:
            raise WebUIError(f"webui did not answer in {self.startup_timeout:.0f} s:\n{self.log_tail()}")
        # The model loads in a background thread; this call waits for it (HTTP 500 if it failed). Newer Forge
        # Neo copies have no such route (404) and load the model with the first generation.
        try:
            self.post("/sdapi/v1/reload-checkpoint", timeout=max(deadline - time.monotonic(), 30))
        except WebUIError as e:
            if "HTTP 404" not in str(e):
                raise WebUIError(f"model {self.checkpoint} failed to load: {e}\n{self.log_tail()}") from None

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate the webui's process group (SIGTERM, then SIGKILL); delete a temp data dir."""
        proc, self.process = self.process, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)  # the group that start_new_session made
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._own_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> WebUI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def forge_from_env() -> tuple[Path, str]:
    """``(SD_FORGE_PATH, SD_FORGE_PYTHON)``; raises ``KeyError`` if ``SD_FORGE_PATH`` is unset."""
    path = Path(os.environ["SD_FORGE_PATH"]).resolve()
    return path, os.environ.get("SD_FORGE_PYTHON") or str(path / "venv" / "bin" / "python")


class ForgeWebUI(WebUI):
    """A Forge-family webui (Forge, Forge Neo, reForge, Forge Classic) on the CPU (or, with
    ``device="cuda"``, the GPU), with the ``sd15`` checkpoint (or ``sdxl``): these hosts recognise a model by
    its sizes. Its interpreter also writes the checkpoint
    (it needs ldm: ``pip install --no-deps stable-diffusion-sdkit`` there). The command line takes the
    launch flags the host has (Forge Classic lacks some of A1111's) and its CPU flag (``--always-cpu``,
    Neo's ``--cpu``)."""

    def __init__(self, webui_path=None, python=None, **kwargs):
        if webui_path is None:
            webui_path, env_python = forge_from_env()
            python = python or env_python
        kwargs.setdefault("checkpoint", "sd15")
        kwargs.setdefault("layouts", ("sd15",))
        super().__init__(webui_path, python, **kwargs)
        # newer Forge Neo copies stop at startup ("clean reinstall", waiting for Enter) unless config.json
        # carries the settings version of their launcher
        version = re.search(r'^VERSION_UID[^=]*=\s*"([^"]+)"', self._read("modules/launch_utils.py"), re.MULTILINE)
        if version:
            self.options = {**(self.options or {}), "VERSION_UID": version.group(1)}

    def _read(self, name: str) -> str:
        path = self.webui_path / name
        return path.read_text() if path.exists() else ""

    def host_flags(self) -> str:
        """The text of the host's argument parsers."""
        parsers = ("modules/cmd_args.py", "backend/args.py", "ldm_patched/modules/args_parser.py")
        return "".join(self._read(name) for name in parsers)

    def launch_flags(self) -> list[str]:
        flags = self.host_flags()
        base = [arg for arg in BASE_ARGS if not arg.startswith("--") or f'"{arg}"' in flags]
        base += os.environ.get("SD_FORGE_ARGS", "").split()
        if '"--gradio-allowed-path"' in flags:  # gradio 4 serves only allowed paths: the data dir, and the UI's
            base += ["--gradio-allowed-path", str(self.webui_path)]  # own script.js and style.css from here
        if self.device == "cuda":  # the host's defaults there (float16)
            return base
        return base + ["--always-cpu" if '"--always-cpu"' in flags else "--cpu"]
