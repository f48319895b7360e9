"""SAG per tile inside the Forge hosts' MultiDiffusion (tests/forge_standin/multidiffusion.py): against the
float64 reference of SAG on each tile as an image of its own, blended as MultiDiffusion blends its tiles."""
import logging

import pytest
import torch

from forge_standin.multidiffusion import MultiDiffusion
from forge_standin.sampling import COND, UNCOND
from sag_ext.core.params import SagParams
from sag_ext.core.session import SagSession
from sag_ext.hosts import forge_call, tiles as tiles_module
from sag_ext.hosts.tiles import SagInTiles
from test_forge_standin import BATCH, PARAMS, ForgeHost, reference_correction

X = torch.randn(BATCH, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 8
SIGMA = torch.full((BATCH,), 8.0)


def tiling(gaussian=False):
    """3 x 3 tiles of 16 latent pixels overlapping by 8 over the 32 x 32 latent, in calls of 4, 4 and 1 tiles."""
    return MultiDiffusion(tile=16, overlap=8, batch=4, gaussian=gaussian)


def blended_reference(host, tiles: MultiDiffusion, params) -> torch.Tensor:
    total, count = torch.zeros(X.shape, dtype=torch.float64), torch.zeros(X.shape, dtype=torch.float64)
    weight = tiles.weight().double()
    for rows, cols in tiles.boxes(*X.shape[-2:]):
        total[:, :, rows, cols] += reference_correction(host, X[:, :, rows, cols].contiguous(), SIGMA, params) * weight
        count[:, :, rows, cols] += weight
    return total / count


@pytest.mark.parametrize("gaussian", [False, True], ids=["MultiDiffusion", "Mixture of Diffusers"])
def test_sag_per_tile_matches_the_float64_reference_of_each_tile_blended(gaussian):
    host = ForgeHost()
    off, _ = host.step(None, x=X, unet_wrapper=tiling(gaussian))
    plain = host.model.calls[:]
    assert plain == [(16, [UNCOND, COND]), (16, [UNCOND, COND]), (4, [UNCOND, COND])]  # 4 tiles of 2 + 2 rows
    on, p = host.step(PARAMS, x=X, unet_wrapper=tiling(gaussian))
    # each call: the tiles' own rows, then SAG's pass over their uncond rows (a cond chunk, as Forge's SAG pass)
    assert host.model.calls == [(16, [UNCOND, COND]), (8, [COND]), (16, [UNCOND, COND]), (8, [COND]),
                                (4, [UNCOND, COND]), (2, [COND])]
    assert not SagSession.of(p).stopped
    want = blended_reference(host, tiling(gaussian), PARAMS)
    assert want.abs().max() > 1e-2
    torch.testing.assert_close((on - off).double(), want, atol=1e-4, rtol=0)


def test_steps_without_sag_run_the_tiles_untouched():
    host = ForgeHost()
    off, _ = host.step(None, x=X, unet_wrapper=tiling())
    outside = SagParams(enabled=True, scale=0.8, blur_sigma=2.0, threshold=1.0, start=0.5, end=1.0)
    on, _ = host.step(outside, x=X, unet_wrapper=tiling())
    torch.testing.assert_close(on, off, atol=0, rtol=0)


class TensorsOnTheDevice:
    """torch as our tile code may use it: no tensor from host data, every index made where x is. On a GPU a
    tensor made on the host is copied to the device, and the copy waits for every queued kernel."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def tensor(*args, **kwargs):
        raise AssertionError("a tensor from host data")

    @staticmethod
    def arange(*args, device=None, **kwargs):
        assert device is not None, "an index made on the host"
        return torch.arange(*args, device=device, **kwargs)


def test_the_tile_calls_make_their_tensors_on_the_device(monkeypatch):
    host = ForgeHost()
    want, _ = host.step(PARAMS, x=X, unet_wrapper=tiling())
    for module in (tiles_module, forge_call):
        monkeypatch.setattr(module, "torch", TensorsOnTheDevice())
    on, p = host.step(PARAMS, x=X, unet_wrapper=tiling())
    assert not SagSession.of(p).stopped
    torch.testing.assert_close(on, want, atol=0, rtol=0)


def test_controlnet_inside_the_tiles_makes_sag_step_aside(caplog):
    """ControlNet's outputs come made for the tiling wrapper's own rows: SAG steps aside with one line and
    the call runs as it came."""
    session = SagSession(PARAMS)
    session.step = object()  # a step with work
    seen = []

    def theirs(apply_model, args):
        seen.append(args["input"].shape[0])
        return apply_model(args["input"])

    args = {"input": torch.zeros(4, 4, 8, 8), "timestep": torch.zeros(4), "cond_or_uncond": [UNCOND, COND],
            "c": {"control": {"middle": [torch.zeros(4, 4, 1, 1)]}, "transformer_options": {}}}
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        out = SagInTiles(session, theirs)(lambda x: x + 1, args)
    assert seen == [4] and torch.equal(out, torch.ones(4, 4, 8, 8))
    assert session.stopped
    assert [r.getMessage() for r in caplog.records] == [
        "[SAG] Self-Attention Guidance is off for this generation: inside the tiles of function: CannotCarry: "
        "ControlNet's outputs inside MultiDiffusion's tiles are made for their own rows"]
