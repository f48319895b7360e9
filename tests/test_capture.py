"""Attention capture on the real ldm UNet: exact mass, untouched output, no N x N allocation."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import float64_reference as ref
from sag_ext.core.capture import MiddleBlockCapture, UnsupportedAttention, middle_block_attention, per_key_attention_mass
from harness.unets import CONTEXT_DIM, sd1_unet, sdxl_like_unet

LAYOUTS = {"sd1": (sd1_unet, 8, 8), "sdxl_like": (sdxl_like_unet, 20, 4)}  # builder, middle heads, downscale


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request):
    build, heads, downscale = LAYOUTS[request.param]
    return build(), heads, downscale


def run_unet(unet, x, rows=slice(None)):
    """One UNet call; row i always gets the same text context, whatever the call's batch."""
    context = torch.randn(16, 7, CONTEXT_DIM, generator=torch.Generator().manual_seed(1))[rows][:x.shape[0]]
    timesteps = torch.full((x.shape[0],), 500)
    with torch.no_grad():
        return unet(x, timesteps, context=context)


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
    transformer, attn = middle_block_attention(unet)
    capture = MiddleBlockCapture(transformer, attn)
    capture.arm(total_rows=4, target_rows=2)  # the last two rows, as the uncond rows of a 2-image batch
    run_unet(unet, x)
    mass, grid = capture.take()
    capture.remove()

    assert grid == (latent[0] // downscale, latent[1] // downscale)
    rows = attn_inputs(unet, x)[2:]
    with torch.no_grad():
        want = ref.full_softmax_mass(attn.to_q(rows), attn.to_k(rows), heads)
    torch.testing.assert_close(mass.double(), want, atol=1e-5, rtol=0)


def test_key_input_feeds_to_k(layout):
    """The webui's attention forwards feed `to_k` the context through the loaded hypernetworks (for attn1
    the context is x): with `key_input` the capture matches the full softmax over those keys."""
    unet, heads, _ = layout
    transformer, attn = middle_block_attention(unet)
    width = attn.to_k.in_features
    torch.manual_seed(3)
    hypernetwork_k = torch.nn.Linear(width, width)
    x = torch.randn(2, 4, 32, 32)
    capture = MiddleBlockCapture(transformer, attn, key_input=hypernetwork_k)
    capture.arm(total_rows=2, target_rows=1)
    run_unet(unet, x)
    mass, _ = capture.take()
    capture.remove()

    rows = attn_inputs(unet, x)[1:]
    with torch.no_grad():
        want = ref.full_softmax_mass(attn.to_q(rows), attn.to_k(hypernetwork_k(rows)), heads)
        without = ref.full_softmax_mass(attn.to_q(rows), attn.to_k(rows), heads)
    torch.testing.assert_close(mass.double(), want, atol=1e-5, rtol=0)
    assert (want - without).abs().max() > 1e-3  # the keys' input matters


def test_hooks_leave_the_unet_output_bit_identical(layout):
    unet, _, _ = layout
    x = torch.randn(2, 4, 32, 32)
    plain = run_unet(unet, x)
    capture = MiddleBlockCapture(*middle_block_attention(unet))
    capture.arm(total_rows=2, target_rows=1)
    hooked = run_unet(unet, x)
    assert capture.take() is not None
    capture.remove()
    assert torch.equal(plain, hooked)


def test_remove_leaves_no_hooks(layout):
    unet, _, _ = layout
    transformer, attn = middle_block_attention(unet)
    before = (len(transformer._forward_pre_hooks), len(attn._forward_hooks))
    capture = MiddleBlockCapture(transformer, attn)
    assert MiddleBlockCapture.attached(attn) is capture
    MiddleBlockCapture(transformer, attn)  # a new capture replaces the old one, never stacks
    assert (len(transformer._forward_pre_hooks), len(attn._forward_hooks)) == (before[0] + 1, before[1] + 1)
    MiddleBlockCapture.release(attn)
    assert (len(transformer._forward_pre_hooks), len(attn._forward_hooks)) == before
    assert MiddleBlockCapture.attached(attn) is None


def test_rows_are_counted_across_chunked_calls(layout):
    """Rows split over several UNet calls (batch_cond_uncond off) give the same mass as one call."""
    unet, _, _ = layout
    x = torch.randn(6, 4, 32, 32)
    capture = MiddleBlockCapture(*middle_block_attention(unet))
    capture.arm(total_rows=6, target_rows=3)
    run_unet(unet, x)
    whole, _ = capture.take()
    capture.arm(total_rows=6, target_rows=3)
    for start in range(0, 6, 2):  # chunks of 2 rows: the uncond block starts inside the second chunk
        run_unet(unet, x[start:start + 2], rows=slice(start, start + 2))
    chunked, _ = capture.take()
    capture.remove()
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_missing_uncond_rows_give_nothing(layout):
    unet, _, _ = layout
    capture = MiddleBlockCapture(*middle_block_attention(unet))
    capture.arm(total_rows=4, target_rows=2)
    run_unet(unet, torch.randn(2, 4, 32, 32))  # the host cut the uncond rows (skip early CFG, NGMS)
    assert capture.take() is None
    capture.remove()


def test_extra_context_is_reported_not_raised():
    unet = sd1_unet()
    transformer, attn = middle_block_attention(unet)
    capture = MiddleBlockCapture(transformer, attn)
    capture.arm(total_rows=1, target_rows=1)
    x = torch.randn(1, 16, attn.to_q.in_features)
    capture._before_transformer(transformer, (torch.randn(1, 1, 4, 4),))  # the block announces a 4x4 grid
    attn(x, context=torch.randn(1, 32, attn.to_q.in_features))  # a key-concatenating neighbour
    assert isinstance(capture.error, UnsupportedAttention)
    assert capture.take() is None
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
    with torch.no_grad(), LargestTensor() as probe:
        mass = per_key_attention_mass(attn, x, chunk_elements=chunk)
    full_matrix = batch * heads * tokens * tokens
    bound = max(chunk, batch * tokens * attn.to_q.out_features)  # one chunk of scores, or q/k themselves
    assert probe.largest <= bound < full_matrix // 8
    with torch.no_grad():
        want = ref.full_softmax_mass(attn.to_q(x), attn.to_k(x), heads)
    torch.testing.assert_close(mass.double(), want, atol=1e-4, rtol=0)
