"""PAG's and SEG's core on the real ldm UNet: the block list, the attention changes against the float64
reference, a shared pass against separate ones, and the guidance equation with its rescales."""
import pytest
import torch

import perturbed_reference as ref
from harness.unets import CONTEXT_DIM, sd1_unet, sdxl_like_unet
from sag_ext.core.layers import find_layers, parse_layers, transformer_groups
from sag_ext.core.perturbation import Change, PerturbationHooks, UnsupportedPerturbation, _blocks, smoothed_query
from sag_ext.core.perturbed import guided

LAYOUTS = {"sd1": sd1_unet, "sdxl_like": sdxl_like_unet}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def unet(request):
    return LAYOUTS[request.param]()


def call(unet, x, context_rows=None):
    context = torch.randn(x.shape[0] if context_rows is None else context_rows, 7, CONTEXT_DIM,
                          generator=torch.Generator().manual_seed(1))
    context = context.repeat(x.shape[0] // context.shape[0], 1, 1)
    timesteps = torch.full((x.shape[0],), 500)
    with torch.no_grad():
        return unet(x.to(next(unet.parameters()).dtype), timesteps, context=context.to(next(unet.parameters()).dtype))


def latent(batch=2, size=(32, 32), seed=5):
    return torch.randn(batch, 4, *size, generator=torch.Generator().manual_seed(seed))


def names_of(unet, layers):
    """The module paths of attn1 modules, for the reference."""
    paths = {id(module): name for name, module in unet.named_modules()}
    return [paths[id(attn)] for _, attn in layers]


def change_of(kind, layers, sigma=0.0):
    return Change(kind, frozenset(id(attn) for _, attn in layers), sigma)


# ---- the block list ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,count", [("m0", 1), ("m0,u0.0", 2), (" d0-1 , u1 ", 3), ("u0-3.0", 4)])
def test_block_list_names_the_layers(text, count):
    assert len(find_layers(sd1_unet(), text)) == count


def test_block_list_counts_blocks_with_a_transformer_as_pamparamms_does():
    unet = sd1_unet()
    assert [len(transformer_groups(unet, part)) for part in "dmu"] == [2, 1, 4]
    (transformer, attn), = find_layers(unet, "d1")
    assert transformer is unet.input_blocks[5][1] and attn is transformer.transformer_blocks[0].attn1


@pytest.mark.parametrize("text,message", [("", "empty"), ("x0", "'x0' is not a block"), ("m1-0", "backwards"),
                                          ("m0.", "is not a block")])
def test_bad_block_lists_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(text)


@pytest.mark.parametrize("text,message", [("d2", "this model has 2 such blocks"), ("m0.1", "has 1 transformers")])
def test_blocks_the_model_lacks_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        find_layers(sd1_unet(), text)


# ---- the attention changes -------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [(4, 4), (6, 3), (3, 6), (5, 8)])
@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5, 10.0, -1.0])
def test_smoothed_query_matches_reference(grid, sigma):
    q = torch.randn(2, grid[0] * grid[1], 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(smoothed_query(q, grid, sigma).double(), ref.blur_tokens(q, grid, sigma),
                               atol=1e-6, rtol=1e-6)


CASES = [("identity", "m0", 0.0), ("smoothed_query", "m0", -1.0), ("smoothed_query", "m0", 1.5),
         ("identity", "d0,u0", 0.0), ("smoothed_query", "m0,u0.0", 10.0)]


@pytest.mark.parametrize("kind,text,sigma", CASES)
def test_changed_pass_matches_reference(unet, kind, text, sigma):
    layers = find_layers(unet, text)
    x = latent()
    hooks = PerturbationHooks(unet, layers)
    with hooks.armed([change_of(kind, layers, sigma)], tile=2):
        ours = call(unet, x)
    hooks.remove()
    expected = call(ref.perturbed_unet(unet, names_of(unet, layers), kind, sigma), x.double())
    plain = call(unet, x)
    assert (expected - plain).abs().max() > 1e-3  # the change changes the prediction
    torch.testing.assert_close(ours.double(), expected, atol=2e-5, rtol=1e-4)


def test_hooks_change_nothing_while_not_armed_and_leave_nothing_behind(unet):
    x = latent()
    before = call(unet, x)
    layers = find_layers(unet, "m0,u0")
    hooks = PerturbationHooks(unet, layers)
    assert torch.equal(call(unet, x), before)
    hooks.remove()
    assert PerturbationHooks.attached(unet) is None
    assert not unet._forward_pre_hooks and all(not attn.to_q._forward_hooks and not attn.to_out[0]._forward_pre_hooks
                                               for _, attn in layers)


def test_shared_pass_gives_each_tile_its_own_change(unet):
    """PAG and SEG in one call of 2B rows, and in two calls of B rows, equal their separate passes."""
    pag_layers, seg_layers = find_layers(unet, "m0"), find_layers(unet, "m0,u0.0")
    changes = [change_of("identity", pag_layers), change_of("smoothed_query", seg_layers, 1.0)]
    x = latent(batch=3)
    hooks = PerturbationHooks(unet, pag_layers + seg_layers)
    separate = []
    for change in changes:
        with hooks.armed([change], tile=3):
            separate.append(call(unet, x))
    with hooks.armed(changes, tile=3):
        shared = call(unet, x.repeat(2, 1, 1, 1), context_rows=3)
    with hooks.armed(changes, tile=3):
        chunked = torch.cat([call(unet, x), call(unet, x)])
    hooks.remove()
    # the same rows in a call of another batch size: float32 rounding of the batched kernels only
    torch.testing.assert_close(shared, torch.cat(separate), atol=2e-5, rtol=0)
    torch.testing.assert_close(chunked, torch.cat(separate), atol=2e-5, rtol=0)


def test_a_pass_that_never_reaches_the_layers_is_reported():
    unet = sd1_unet()
    layers = find_layers(unet, "m0")
    hooks = PerturbationHooks(unet, layers)
    with pytest.raises(UnsupportedPerturbation, match="without its chosen self-attention layers"):
        with hooks.armed([change_of("identity", layers)], tile=2):
            pass  # e.g. a compiled copy of the UNet ran instead
    hooks.remove()


def test_seg_refuses_queries_split_into_tiles():
    """Hypertile splits self-attention's tokens into tiles: SEG's blur over the grid cannot be made there."""
    unet = sd1_unet()
    layers = find_layers(unet, "m0")
    attn = layers[0][1]
    original = attn.forward
    attn.forward = lambda x, context=None, **kwargs: original(x.reshape(x.shape[0] * 2, -1, x.shape[2])).reshape(x.shape)
    hooks = PerturbationHooks(unet, layers)
    with pytest.raises(UnsupportedPerturbation, match="grid of its block"):
        with hooks.armed([change_of("smoothed_query", layers, -1.0)], tile=2):
            call(unet, latent(size=(48, 48)))
    with hooks.armed([change_of("identity", layers)], tile=2):  # PAG is the same in tiles: each token gets its V
        tiled = call(unet, latent(size=(48, 48)))
    hooks.remove()
    attn.forward = original
    hooks = PerturbationHooks(unet, layers)
    with hooks.armed([change_of("identity", layers)], tile=2):
        whole = call(unet, latent(size=(48, 48)))
    hooks.remove()
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


# ---- the guidance equation ---------------------------------------------------------------------------

@pytest.mark.parametrize("rescale,mode", [(0.0, "full"), (0.7, "full"), (0.7, "partial"), (1.0, "partial"),
                                          (0.0, "snf")])
@pytest.mark.parametrize("with_uncond", [True, False])
def test_guided_matches_reference(rescale, mode, with_uncond):
    g = torch.Generator().manual_seed(4)
    cfg, cond, perturbed, uncond = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(4))
    uncond = uncond if with_uncond else None
    ours = guided(cfg, cond, perturbed, uncond, 2.5, rescale, mode)
    torch.testing.assert_close(ours.double(), ref.guided(cfg, cond, perturbed, uncond, 2.5, rescale, mode),
                               atol=1e-5, rtol=1e-5)


def test_snf_picks_from_both_guidances():
    g = torch.Generator().manual_seed(6)
    cfg, cond, perturbed, uncond = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(4))
    fused = guided(cfg, cond, perturbed, uncond, 3.0, mode="snf") - uncond
    term, guidance = 3.0 * (cond - perturbed), cfg - uncond
    from_term, from_cfg = torch.isclose(fused, term), torch.isclose(fused, guidance)
    assert (from_term | from_cfg).all() and from_term.any() and from_cfg.any()


@pytest.mark.parametrize("rescale,mode", [(0.7, "full"), (0.7, "partial"), (0.0, "snf")])
def test_the_equation_makes_no_tensor_from_host_data(monkeypatch, rescale, mode):
    """Every tensor of a step is made on the device: a tensor from host data (`torch.tensor`) must be copied
    there, and on a GPU that copy waits for every kernel queued before it, in every step (snf's blur kernel
    was one)."""
    def from_host_data(*args, **kwargs):
        raise AssertionError("torch.tensor in a sampling step")

    g = torch.Generator().manual_seed(4)
    cfg, cond, perturbed, uncond = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(4))
    monkeypatch.setattr(torch, "tensor", from_host_data)
    guided(cfg, cond, perturbed, uncond, 2.5, rescale, mode)


def test_changed_rows_are_slices_of_neighbouring_images():
    """Rows are changed through slices (no index tensor to copy to the device in every call): one per run
    of neighbouring images, per_image rows each (Hypertile splits an image's tokens into several rows)."""
    assert _blocks([2, 3], 1) == [slice(2, 4)]
    assert _blocks([0, 1, 3], 2) == [slice(0, 4), slice(6, 8)]
    assert _blocks([], 1) == []
