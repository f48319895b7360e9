"""SAG next to its neighbours in a real webui, one file a neighbour: the built-in Hypertile, an
ADetailer-style nested pass, and third-party extensions that share a generation with SAG.

Every case follows `check_sag_case` (on differs from off, on is reproducible, off after on equals off
before, SAG's infotext keys exactly when on, no traceback and no `[SAG]` line in the log) with the
neighbour enabled.

* Hypertile (built into the webui) wraps, by replacing `forward` on the instance, the very middle-block
  `attn1` whose `__call__` SAG hooks. It is switched on with the `hypertile_enable_unet` option (set
  back explicitly afterwards), with tiles of 128 px so that tiles really split in the top levels.
* The nested pass is our own test-only extension, `tests/e2e/fixtures/nested_pass`: its
  `postprocess_image` runs an img2img `process_images` on the outer image as ADetailer does.
* Third-party neighbours are never part of this repository. Check them out at the commits pinned in
  `neighbourhood.NEIGHBOURS` into `$SAG_NEIGHBOURS_DIR/<folder>` (e.g. `git clone <url> <folder> &&
  git -C <folder> checkout <commit>`); a neighbour whose folder is missing is skipped with the reason.
  They are linked into the webui's `extensions/` under names that sort before ("0-<folder>") and after
  ("zz-<folder>") `sd-webui-sag`, since the webui loads extensions in folder-name order; each order gets
  its own webui process, shared by the whole folder. A neighbour that disturbs the others (ControlNet,
  see `neighbourhood.NEIGHBOURS`) gets webuis of its own.
"""
from __future__ import annotations

import pytest

from e2e.neighbours.neighbourhood import LAYOUTS, NEIGHBOURS, NESTED_PASS, WIDE, neighbour_webui


@pytest.fixture(scope="package")
def neighbourhood(request, checkpoint_cache, tmp_path_factory):
    """A webui with SAG, the nested-pass fixture and every checked-out shared neighbour, loading before or
    after SAG (`request.param`); one per order for the whole folder."""
    shared = [neighbour for neighbour in NEIGHBOURS.values() if neighbour.shared]
    with neighbour_webui(request.param, shared, tmp_path_factory, checkpoint_cache, [NESTED_PASS]) as server:
        yield server


@pytest.fixture(scope="package")
def controlnet_webui(request, checkpoint_cache, tmp_path_factory):
    """A webui with SAG, ControlNet and (if checked out) Tiled Diffusion, which works with its tiles, loading
    before or after SAG (`request.param`)."""
    with neighbour_webui(request.param, [NEIGHBOURS["controlnet"], NEIGHBOURS["tiled_diffusion"]], tmp_path_factory,
                         checkpoint_cache,
                         layouts=(*LAYOUTS, WIDE)) as server:
        yield server
