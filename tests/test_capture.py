"""Attention capture on the real ldm UNet: exact mass, untouched output, no N x N allocation."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import float64_reference as ref
from sag_ext.core.capture import (LastRowsOfStep, MiddleBlockCapture, UncondChunk, UnsupportedAttention,
                                  middle_block_attention, per_key_attention_mass)
from harness.unets import CONTEXT_DIM, sd1_unet, sdxl_like_unet

LAYOUTS = {"sd1": (sd1_unet, 8, 8), "sdxl_like": (sdxl_like_unet, 20, 4)}  # builder, middle heads, downscale


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request):
    build, heads, downscale = LAYOUTS[request.param]
    return build(), heads, downscale


def run_unet(unet, x, rows=slice(None), **kwargs):
    """One UNet call; row i always gets the same text context, whatever the call's batch. `kwargs` go to
    the UNet's forward (the Forge hosts pass `transformer_options`; ldm's UNet takes and ignores them)."""
    context = torch.randn(16, 7, CONTEXT_DIM, generator=torch.Generator().manual_seed(1))[rows][:x.shape[0]]
    timesteps = torch.full((x.shape[0],), 500)
    with torch.no_grad():
        return unet(x, timesteps, context=context, **kwargs)


def capture_on(unet):
    return MiddleBlockCapture(unet, *middle_block_attention(unet))


def captured_mass(unet, rows, *calls):
    """The mass that the row selection `rows` records from the UNet calls `calls` (functions), or None."""
    capture = capture_on(unet)
    capture.arm(rows)
    for call in calls:
        call()
    taken = capture.take()
    capture.remove()
    return None if taken is None else taken[0]


def attn_inputs(unet, x):
    """The middle attn1's input, recorded by an independent hook."""
    seen = []
    _, attn = middle_block_attention(unet)
    handle = attn.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    run_unet(unet, x)
    handle.remove()
    return seen[0]


def test_middle_block_has_the_layout_heads(layout):
    unet, heads, _ = layout
    assert middle_block_attention(unet)[1].heads == heads


@pytest.mark.parametrize("latent", [(32, 32), (48, 24)])
def test_captured_mass_equals_full_softmax_reference(layout, latent):
    unet, heads, downscale = layout
    x = torch.randn(4, 4, *latent)
    _, attn = middle_block_attention(unet)
    capture = capture_on(unet)
    capture.arm(LastRowsOfStep(total=4, target=2))  # the last two rows, as the uncond rows of a 2-image batch
    run_unet(unet, x)
    mass, grid = capture.take()
    capture.remove()

    assert grid == (latent[0] // downscale, latent[1] // downscale)
    rows = attn_inputs(unet, x)[2:]
    with torch.no_grad():
        want = ref.full_softmax_mass(attn.to_q(rows), attn.to_k(rows), heads)
    torch.testing.assert_close(mass.double(), want, atol=1e-5, rtol=0)


def keys_through(attn, key_input):
    """Make `attn` compute as the webui's attention forwards do with a hypernetwork loaded: `to_k` gets
    the context through `key_input` (for attn1 the context is x). Undone with `del attn.forward`."""
    def forward(x, context=None, mask=None, **kwargs):
        q, k, v = attn.to_q(x), attn.to_k(key_input(x)), attn.to_v(x)
        out = torch.nn.functional.scaled_dot_product_attention(
            *(t.reshape(t.shape[0], -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2) for t in (q, k, v)))
        return attn.to_out(out.transpose(1, 2).reshape(q.shape))
    attn.forward = forward


def test_capture_reads_the_keys_the_host_computed(layout):
    """A webui whose attention feeds `to_k` something other than x (its hypernetworks): the mass is the
    softmax over the keys the host used."""
    unet, heads, _ = layout
    _, attn = middle_block_attention(unet)
    width = attn.to_k.in_features
    torch.manual_seed(3)
    hypernetwork_k = torch.nn.Linear(width, width)
    x = torch.randn(2, 4, 32, 32)
    rows = attn_inputs(unet, x)[1:]
    keys_through(attn, hypernetwork_k)
    try:
        capture = capture_on(unet)
        capture.arm(LastRowsOfStep(total=2, target=1))
        run_unet(unet, x)
        mass, _ = capture.take()
        capture.remove()
    finally:
        del attn.forward

    with torch.no_grad():
        want = ref.full_softmax_mass(attn.to_q(rows), attn.to_k(hypernetwork_k(rows)), heads)
        without = ref.full_softmax_mass(attn.to_q(rows), attn.to_k(rows), heads)
    torch.testing.assert_close(mass.double(), want, atol=1e-5, rtol=0)
    assert (want - without).abs().max() > 1e-3  # the keys' input matters


def test_hooks_leave_the_unet_output_bit_identical(layout):
    unet, _, _ = layout
    x = torch.randn(2, 4, 32, 32)
    plain = run_unet(unet, x)
    capture = capture_on(unet)
    capture.arm(LastRowsOfStep(total=2, target=1))
    hooked = run_unet(unet, x)
    assert capture.take() is not None
    capture.remove()
    assert torch.equal(plain, hooked)


def hook_counts(unet):
    transformer, attn = middle_block_attention(unet)
    return (len(unet._forward_pre_hooks), len(transformer._forward_pre_hooks), len(attn.to_q._forward_hooks),
            len(attn.to_k._forward_hooks), len(attn._forward_hooks))


def test_remove_leaves_no_hooks(layout):
    unet, _, _ = layout
    _, attn = middle_block_attention(unet)
    before = hook_counts(unet)
    capture = capture_on(unet)
    assert MiddleBlockCapture.attached(attn) is capture
    capture_on(unet)  # a new capture replaces the old one, never stacks
    assert hook_counts(unet) == tuple(count + 1 for count in before[:4]) + before[4:]
    MiddleBlockCapture.release(attn)
    assert hook_counts(unet) == before
    assert MiddleBlockCapture.attached(attn) is None


def test_rows_are_counted_across_chunked_calls(layout):
    """Rows split over several UNet calls (batch_cond_uncond off) give the same mass as one call."""
    unet, _, _ = layout
    x = torch.randn(6, 4, 32, 32)
    whole = captured_mass(unet, LastRowsOfStep(total=6, target=3), lambda: run_unet(unet, x))
    chunked = captured_mass(unet, LastRowsOfStep(total=6, target=3), *[  # the uncond block starts inside the second chunk
        lambda start=start: run_unet(unet, x[start:start + 2], rows=slice(start, start + 2)) for start in range(0, 6, 2)])
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_missing_uncond_rows_give_nothing(layout):
    unet, _, _ = layout
    capture = capture_on(unet)
    capture.arm(LastRowsOfStep(total=4, target=2))
    run_unet(unet, torch.randn(2, 4, 32, 32))  # the host cut the uncond rows (skip early CFG, NGMS)
    assert capture.take() is None
    capture.remove()


def test_a_compiled_unet_is_reported():
    """A UNet compiled before the hooks were added (Forge Neo's Torch Compile Integrated) runs past them: that is
    reported, not taken for a step without uncond rows."""
    unet = sd1_unet()
    compiled = torch.compile(unet, backend="eager", dynamic=True)
    x = torch.randn(2, 4, 32, 32)
    run_unet(compiled, x)
    capture = capture_on(unet)
    capture.arm(LastRowsOfStep(total=2, target=1))
    run_unet(compiled, x)
    with pytest.raises(UnsupportedAttention, match="compiled or replaced"):
        capture.take()
    capture.arm(LastRowsOfStep(total=2, target=1))
    run_unet(unet, x[:1])  # the uncond rows skipped: nothing, no error
    assert capture.take() is None
    capture.remove()


def assert_reported(unet):
    """One UNet call with a capture armed: it completes, and the capture reports UnsupportedAttention."""
    capture = capture_on(unet)
    capture.arm(LastRowsOfStep(total=1, target=1))
    run_unet(unet, torch.randn(1, 4, 32, 32))
    assert isinstance(capture.error, UnsupportedAttention)
    assert capture.take() is None
    capture.remove()


def test_concatenated_keys_are_reported_not_raised():
    """A neighbour that feeds the self-attention extra keys (ControlNet's reference-only concatenates a
    reference's tokens): SAG reports it and the UNet call completes."""
    unet = sd1_unet()
    _, attn = middle_block_attention(unet)
    keys_through(attn, lambda x: torch.cat([x, x], dim=1))
    try:
        assert_reported(unet)
    finally:
        del attn.forward


def test_a_pass_inside_the_unet_call_is_reported_not_misread():
    """A neighbour that runs a pass of its own inside the UNet's forward (ControlNet's reference modes run
    the UNet's forward on the reference first, without the module call): the middle block runs twice in
    one UNet call, and SAG reports it instead of taking the other pass's attention."""
    unet = sd1_unet()
    inner = unet.forward

    def forward_with_a_reference_pass(x, *args, **kwargs):
        inner(torch.randn_like(x), *args, **kwargs)
        return inner(x, *args, **kwargs)
    unet.forward = forward_with_a_reference_pass
    try:
        assert_reported(unet)
    finally:
        del unet.forward


# ---- the Forge family's layout: chunks named per call in transformer_options["cond_or_uncond"] ------

COND, UNCOND = 0, 1


def forge_call(unet, x, chunks, rows=slice(None)):
    return run_unet(unet, x, rows, transformer_options={"cond_or_uncond": chunks})


@pytest.mark.parametrize("chunks", [[UNCOND, COND], [COND, UNCOND]])
def test_uncond_chunk_is_found_by_its_marker(layout, chunks):
    """Whatever the chunk order of a call, the rows marked uncond are recorded."""
    unet, heads, _ = layout
    _, attn = middle_block_attention(unet)
    x = torch.randn(4, 4, 32, 32)
    capture = capture_on(unet)
    capture.arm(UncondChunk(target=2))
    forge_call(unet, x, chunks)
    mass, _ = capture.take()
    capture.remove()
    start = 2 * chunks.index(UNCOND)
    rows = attn_inputs(unet, x)[start:start + 2]
    with torch.no_grad():
        want = ref.full_softmax_mass(attn.to_q(rows), attn.to_k(rows), heads)
    torch.testing.assert_close(mass.double(), want, atol=1e-5, rtol=0)


def test_uncond_in_a_call_of_its_own(layout):
    """Cond and uncond as separate calls (the host splits by free memory): the uncond call is recorded,
    and a later uncond chunk in the same step (another guidance's pass) is not."""
    unet, _, _ = layout
    x = torch.randn(4, 4, 32, 32)
    together = captured_mass(unet, UncondChunk(target=2), lambda: forge_call(unet, x, [UNCOND, COND]))
    apart = captured_mass(unet, UncondChunk(target=2), lambda: forge_call(unet, x[2:], [COND], rows=slice(2, 4)),
                          lambda: forge_call(unet, x[:2], [UNCOND], rows=slice(0, 2)),
                          lambda: forge_call(unet, torch.randn(2, 4, 32, 32), [UNCOND]))
    torch.testing.assert_close(apart, together, atol=1e-5, rtol=0)


def test_a_step_without_uncond_chunk_gives_nothing(layout):
    """CFG 1 or a skipped uncond: the calls name only cond chunks, and nothing is recorded."""
    unet, _, _ = layout
    capture = capture_on(unet)
    capture.arm(UncondChunk(target=2))
    forge_call(unet, torch.randn(2, 4, 32, 32), [COND])
    assert capture.take() is None and capture.error is None
    capture.remove()


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


@pytest.mark.parametrize("tokens", [1024, 2048])
def test_capture_allocates_no_full_attention_matrix(tokens):
    _, attn = middle_block_attention(sdxl_like_unet())
    batch, heads, chunk = 1, attn.heads, 1 << 18
    x = torch.randn(batch, tokens, attn.to_q.in_features)
    with torch.no_grad():
        q, k = attn.to_q(x), attn.to_k(x)
    with torch.no_grad(), LargestTensor() as probe:
        mass = per_key_attention_mass(q, k, heads, chunk_elements=chunk)
    full_matrix = batch * heads * tokens * tokens
    bound = max(chunk, batch * tokens * attn.to_q.out_features)  # one chunk of scores, or q/k themselves
    assert probe.largest <= bound < full_matrix // 8
    with torch.no_grad():
        want = ref.full_softmax_mass(q, k, heads)
    torch.testing.assert_close(mass.double(), want, atol=1e-4, rtol=0)


def test_a_tile_of_the_latent_is_reported():
    """A neighbour that runs the UNet on tiles of the image (A1111's Tiled Diffusion) gives the middle block a
    tile's grid: recorded as the image's, the mask would be that tile's, stretched over the image."""
    unet = sd1_unet()
    capture = capture_on(unet)
    capture.arm(LastRowsOfStep(total=4, target=2), latent_size=(32, 32))
    run_unet(unet, torch.randn(12, 4, 16, 16))  # three tiles of 16x16, each with the step's 4 rows
    assert capture.take() is None
    assert isinstance(capture.error, UnsupportedAttention) and "a 16x16 tile of the 32x32 latent" in str(capture.error)
    capture.error = None
    capture.arm(LastRowsOfStep(total=4, target=2), latent_size=(32, 32))
    run_unet(unet, torch.randn(4, 4, 32, 32))
    assert capture.take()[1] == (4, 4) and capture.error is None
    capture.remove()
