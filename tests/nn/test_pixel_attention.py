"""ebsparse.nn.pixel_attention against the DDIM code's bmm attention (autograd through plain ops):
hypothesis over shapes (one pixel, one channel, odd sizes), fp32 and fp64, both forms (three tensors,
one stacked tensor), forward and every gradient; gradcheck and gradgradcheck in fp64; the U-Net's
AttnBlock runs it (dense and stacked sparse q/k/v) and still equals the reference; bad input raises."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.models.ddpm_unet import AttnBlock
from ebsparse.nn import sparsify
from ebsparse.nn.pixel_attention import pixel_attention, pixel_attention_stacked


def reference(q, k, v, scale):
    """The DDIM U-Net's AttnBlock attention on (B, C, N) tensors."""
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * scale, dim=2)
    return torch.bmm(v, w.permute(0, 2, 1))


def _graph(node):
    """Every autograd node reachable from `node`."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is not None and n not in seen:
            seen.add(n)
            todo.extend(f for f, _ in n.next_functions)
    return seen


def _tol(dtype):
    return dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-4)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 19), n=st.integers(1, 37), stacked=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_matches_reference_forward_and_gradients(b, c, n, stacked, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, 3 * c, n, dtype=dtype, generator=g) * 2
    grad = torch.randn(b, c, n, dtype=dtype, generator=g)
    scale = c**-0.5
    ref_in = qkv.clone().requires_grad_()
    ref = reference(*ref_in.chunk(3, dim=1), scale)
    ref.backward(grad)
    x = qkv.clone().requires_grad_()
    if stacked:
        out = pixel_attention_stacked(x, scale)
    else:
        out = pixel_attention(*x.chunk(3, dim=1), scale)
    assert type(out.grad_fn).__name__ == "_PixelAttentionBackward"
    out.backward(grad)
    torch.testing.assert_close(out, ref, **_tol(dtype))
    torch.testing.assert_close(x.grad, ref_in.grad, **_tol(dtype))


@pytest.mark.parametrize("stacked", [False, True], ids=["three", "stacked"])
def test_gradcheck_and_second_order(stacked):
    """The first-order gradient (the out= buffers) and, with create_graph, an exact second order."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 9, 5, dtype=torch.float64, generator=g).requires_grad_()

    def f(x):
        return pixel_attention_stacked(x, 0.7) if stacked else pixel_attention(*x.chunk(3, dim=1), 0.7)

    torch.autograd.gradcheck(f, (qkv,))
    torch.autograd.gradgradcheck(f, (qkv,))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "stacked-sparse"])
def test_attn_block_runs_it_and_equals_the_reference(sparse):
    """AttnBlock's attention (three dense q/k/v convs, or one stacked sparse call handing over its
    whole output) equals the reference computed from the same layers' outputs."""
    torch.manual_seed(0)
    block = AttnBlock(16, 4).double()
    if sparse:
        sparsify(block, density=0.5, include=["q", "k", "v"], backend="native")
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64, requires_grad=True)
    out = block(x)
    nodes = [n for n in _graph(out.grad_fn) if type(n).__name__ == "_PixelAttentionBackward"]
    assert len(nodes) == 1
    # one stacked tensor (the sparse call's whole output) or q, k, v
    assert len(nodes[0].next_functions) == (1 if sparse else 3)
    gx, *gp = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    ref_x = x.detach().clone().requires_grad_()
    h = block.norm(ref_x)
    q, k, v = (getattr(block, n)(h).reshape(2, 16, 15) for n in "qkv")
    ref = ref_x + block.proj_out(reference(q, k, v, 16**-0.5).reshape(2, 16, 5, 3))
    rgx, *rgp = torch.autograd.grad(ref.square().sum(), [ref_x, *block.parameters()])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, rgx)
    for a, r in zip(gp, rgp):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "stacked-sparse"])
def test_attn_block_under_autocast_runs_the_reference_ops(sparse):
    """bf16 autocast on the CPU: the reference's ops (autocast picks each product's dtype), forward
    and backward, and the same result as the reference computed under autocast."""
    torch.manual_seed(0)
    block = AttnBlock(32, 8)
    if sparse:
        sparsify(block, density=0.5, include=["q", "k", "v"], backend="native")
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        h = block.norm(x)
        q, k, v = (getattr(block, n)(h).reshape(2, 32, 16) for n in "qkv")
        ref = x + block.proj_out(reference(q, k, v, 32**-0.5).reshape(2, 32, 4, 4))
    assert not any(type(n).__name__ == "_PixelAttentionBackward" for n in _graph(out.grad_fn))
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)
    out.float().square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bad_input_names_the_argument():
    q = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="k: expected q's shape"):
        pixel_attention(q, torch.randn(2, 4, 7), q, 1.0)
    with pytest.raises(ValueError, match="v: expected a floating"):
        pixel_attention(q, q, torch.ones(2, 4, 6, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="q: expected a floating"):
        pixel_attention(torch.randn(2, 4), q, q, 1.0)
    with pytest.raises(ValueError, match="qkv: expected q, k, v stacked"):
        pixel_attention_stacked(torch.randn(2, 8, 6), 1.0)
