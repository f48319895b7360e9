"""What the two benchmark probes share (`webui_probe` for AUTOMATIC1111's webui, `forge_probe` for Forge;
test extensions, not part of SAG): the outline of an always-on Script without UI, the routes through
which a benchmark asks for the next generation's measurement and reads its record, and the GPU's clock and
peak memory (without CUDA, as in the tests' CPU webuis: the host's clock alone and no peak). Imported by the
probes inside a webui (it imports the webui's `modules`)."""
import modules.scripts as scripts
import torch
from modules import script_callbacks

CUDA = torch.cuda.is_available()


def synchronize():
    if CUDA:
        torch.cuda.synchronize()


def start_peak():
    """Wait for the GPU and start measuring its peak memory afresh."""
    synchronize()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def peak_mib():
    """The peak CUDA memory allocated since `start_peak`, MiB (None without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2 ** 20 if CUDA else None


class AlwaysOnProbe(scripts.Script):
    """An always-on Script without UI, titled `probe_title`. (A probe imports this module, not the class,
    so that the webui's script loader does not take the base class for a script of its own.)"""

    probe_title = ""

    def title(self):
        return self.probe_title

    def show(self, is_img2img):
        return scripts.AlwaysVisible


def register_routes(last: dict, next_requests: set, requests) -> None:
    """`GET /sag-bench/last` answers `last` (the last generation's record); `POST /sag-bench/<request>`, for
    each of `requests`, adds the request to `next_requests` (what the next generation does besides measuring)."""

    def for_next_generation(what):
        def request():
            next_requests.add(what)
        return request

    def add_routes(_demo, app):
        app.add_api_route("/sag-bench/last", lambda: dict(last), methods=["GET"])
        for what in requests:
            app.add_api_route(f"/sag-bench/{what}", for_next_generation(what), methods=["POST"])

    script_callbacks.on_app_started(add_routes)


def extra_rows(next_requests: set) -> int:
    """How many more copies of the cond rows the next generation's host call carries ("rows-N" requested)."""
    return max((int(what[len("rows-"):]) for what in next_requests if what.startswith("rows-")), default=0)
