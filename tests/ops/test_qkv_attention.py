"""qkv_attention against the plain-math fp64 reference (softmax(scale Q K^T) V per head, no SDPA) on
every backend that runs here: hypothesis over batch, tokens (1 and odd included), heads and head
widths (odd, 33, 72), fp32 and fp64, output and d(qkv); gradcheck in fp64; auto's choice by
sequence length; errors naming the argument; DiT's Attention on the kernel."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends import trace
from ebsparse.backends.extension import extension_error
from ebsparse.models.dit import Attention
from ebsparse.ops import qkv_attention, qkv_attention_reference
from ebsparse.ops.qkv_attention import NATIVE_MAX_TOKENS
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")
OP = "qkv_attention"
needs_native = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))


def _tol(dtype, magnitude=1.0):
    """Absolute error scaled by the compared values' magnitude: with q, k, v scaled by `spread`, fp32
    rounding in the softmax of logits of order spread**2 grows with the value magnitude."""
    eps = 1e-11 if dtype == torch.float64 else 2e-5
    return dict(atol=eps * max(1.0, magnitude), rtol=eps * 10)


def _case(b, n, h, d, dtype, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(b, n, 3 * h * d, generator=g, dtype=dtype) * spread).requires_grad_()
    go = torch.randn(b, n, h * d, generator=g, dtype=dtype)
    return qkv, go


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 3), n=st.sampled_from([1, 2, 7, 16, 33, 64, 65]), h=st.integers(1, 4),
       d=st.sampled_from([1, 5, 8, 33, 64, 72]), spread=st.sampled_from([0.3, 1.0, 3.0]), seed=st.integers(0, 999))
def test_matches_reference(backend, dtype, b, n, h, d, spread, seed):
    check_against_reference(backend, b, n, h, d, dtype, seed, spread)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("extra", [0, 3])
def test_many_samples_per_thread(backend, extra):
    """Four or more samples a thread: the native float32 kernel hands out whole samples as tasks."""
    check_against_reference(backend, 4 * torch.get_num_threads() + extra, 17, 3, 8, torch.float32, seed=extra)


def check_against_reference(backend, b, n, h, d, dtype, seed, spread=1.0):
    qkv, go = _case(b, n, h, d, dtype, seed, spread)
    with runs_on(backend, OP, ("forward", "backward")):
        out = qkv_attention(qkv, h, backend=backend)
        (dqkv,) = torch.autograd.grad(out, qkv, go)
    q64 = qkv.detach().double().requires_grad_()
    ref = qkv_attention_reference(q64, h)
    (ref_d,) = torch.autograd.grad(ref, q64, go.double())
    assert out.dtype == dtype and out.shape == (b, n, h * d) and dqkv.shape == qkv.shape
    torch.testing.assert_close(out.double(), ref, **_tol(dtype, ref.abs().max().item()))
    torch.testing.assert_close(dqkv.double(), ref_d, **_tol(dtype, ref_d.abs().max().item()))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_gradcheck_fp64(backend):
    qkv = torch.randn(2, 3, 3 * 2 * 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: qkv_attention(t, 2, 0.7, backend=backend), (qkv,))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
def test_strided_input_and_scale(backend):
    """A non-contiguous qkv (a transposed view) and an explicit scale give the reference's answer."""
    base = torch.randn(2, 3 * 2 * 8, 9).requires_grad_()
    qkv = base.transpose(1, 2)
    with runs_on(backend, OP, ("forward", "backward")):
        out = qkv_attention(qkv, 2, scale=0.3, backend=backend)
        (grad,) = torch.autograd.grad(out.square().sum(), base)
    ref_in = base.detach().double().requires_grad_()
    ref = qkv_attention_reference(ref_in.transpose(1, 2), 2, scale=0.3)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), ref_in)
    torch.testing.assert_close(out.double(), ref, **_tol(torch.float32))
    torch.testing.assert_close(grad.double(), ref_grad, **_tol(torch.float32, 10.0))


@needs_native
def test_auto_runs_native_up_to_the_threshold_then_dense():
    for n, expected in ((NATIVE_MAX_TOKENS, "native"), (NATIVE_MAX_TOKENS + 1, "dense")):
        qkv = torch.randn(1, n, 3 * 1 * 4, requires_grad=True)
        with runs_on(expected, OP, ("forward", "backward")):
            qkv_attention(qkv, 1).sum().backward()


@needs_native
def test_native_named_runs_long_sequences_too():
    qkv = torch.randn(1, NATIVE_MAX_TOKENS + 3, 3 * 2 * 4, dtype=torch.float64)
    with runs_on("native", OP):
        out = qkv_attention(qkv, 2, backend="native")
    torch.testing.assert_close(out, qkv_attention_reference(qkv, 2))


@needs_native
def test_native_refuses_what_it_cannot_run():
    with pytest.raises(RuntimeError, match="backend 'native' cannot run qkv_attention.*bfloat16"):
        qkv_attention(torch.randn(1, 4, 6, dtype=torch.bfloat16), 1, backend="native")


@needs_native
def test_kernel_checks_name_the_argument():
    qkv = torch.randn(1, 4, 12)
    with pytest.raises(RuntimeError, match="num_heads"):
        torch.ops.ebsparse.qkv_attention(qkv, 5, 1.0)
    out, lse, _ = torch.ops.ebsparse.qkv_attention(qkv, 2, 1.0)
    with pytest.raises(RuntimeError, match="lse"):
        torch.ops.ebsparse.qkv_attention_backward(out, qkv, lse[:, :1], None, 2, 1.0)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.ebsparse.qkv_attention_backward(out.double(), qkv, lse, None, 2, 1.0)
    with pytest.raises(RuntimeError, match="probs"):
        torch.ops.ebsparse.qkv_attention_backward(out, qkv, lse, torch.ones(1, 2, 4, 3), 2, 1.0)


@needs_native
def test_blas_backward_reads_given_probs():
    """float64 (the BLAS kernel, which never keeps P itself) backward given P agrees with its own
    recomputation from lse."""
    qkv = torch.randn(2, 9, 3 * 2 * 5, dtype=torch.float64)
    go = torch.randn(2, 9, 2 * 5, dtype=torch.float64)
    ops = torch.ops.ebsparse
    _, lse, kept = ops.qkv_attention(qkv, 2, 0.4, True)
    assert kept.numel() == 0
    q, k, _ = qkv.reshape(2, 9, 3, 2, 5).permute(2, 0, 3, 1, 4)
    probs = torch.softmax(0.4 * q @ k.transpose(-1, -2), dim=-1).contiguous()
    torch.testing.assert_close(ops.qkv_attention_backward(go, qkv, lse, probs, 2, 0.4),
                               ops.qkv_attention_backward(go, qkv, lse, None, 2, 0.4))


@pytest.mark.parametrize("call, error, match", [
    (lambda: qkv_attention([1.0], 1), TypeError, "qkv: expected a torch.Tensor"),
    (lambda: qkv_attention(torch.ones(4, 6), 1), ValueError, "qkv: expected 3 dims"),
    (lambda: qkv_attention(torch.ones(1, 4, 6, dtype=torch.int64), 1), TypeError, "qkv: expected a floating"),
    (lambda: qkv_attention(torch.ones(1, 4, 8), 1), ValueError, "qkv: expected a last dim of 3 \\* num_heads"),
    (lambda: qkv_attention(torch.ones(1, 4, 6), 0), ValueError, "num_heads: expected a positive int"),
    (lambda: qkv_attention(torch.ones(1, 4, 6), True), ValueError, "num_heads: expected a positive int"),
    (lambda: qkv_attention(torch.ones(1, 4, 6), 1, -1.0), ValueError, "scale: expected a positive number"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
def test_empty_batch_and_tokens(backend):
    for shape in ((0, 4, 12), (2, 0, 12)):
        qkv = torch.randn(shape, requires_grad=True)
        out = qkv_attention(qkv, 2, backend=backend)
        out.sum().backward()
        assert out.shape == shape[:2] + (4,) and qkv.grad.shape == shape


@needs_native
def test_second_order_gradient_raises():
    qkv = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)
    out = qkv_attention(qkv, 1, backend="native")
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(out.sum(), qkv, create_graph=True)


@needs_native
@pytest.mark.parametrize("heads, dim", [(6, 384), (4, 4 * 72), (3, 3 * 33)])
def test_dit_attention_runs_native_and_matches_sdpa(heads, dim):
    """DiT's Attention on the CPU (no block_sparse) runs the kernel, and gives the old path's
    (unbind, SDPA) output and gradients."""
    torch.manual_seed(0)
    attn = Attention(dim, heads).double()
    x = torch.randn(2, 17, dim, dtype=torch.float64, requires_grad=True)
    with runs_on("native", OP, ("forward", "backward")):
        y = attn(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *attn.parameters()])
    qkv = attn.qkv(x)
    q, k, v = (t.transpose(1, 2) for t in qkv.reshape(2, 17, 3, heads, dim // heads).unbind(2))
    ref = attn.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 17, dim))
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *attn.parameters()])
    torch.testing.assert_close(y, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_dit_attention_block_sparse_path_is_kept():
    attn = Attention(16, 2)
    seen = []
    attn.block_sparse = lambda q, k, v: seen.append(q.shape) or torch.zeros_like(q)
    with trace() as calls:
        attn(torch.randn(3, 5, 16))
    assert seen == [(3, 2, 5, 8)] and not [c for c in calls if c[0] == OP]


def test_dit_attention_compiles_to_sdpa():
    """Under torch.compile (fullgraph) DiT's Attention runs SDPA, no kernel call, and matches eager."""
    torch.manual_seed(0)
    attn = Attention(24, 2)
    x = torch.randn(2, 9, 24, requires_grad=True)
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    with trace() as calls:
        out = compiled(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    assert not [c for c in calls if c[0] == OP]
    (ref_grad,) = torch.autograd.grad(attn(x).sum(), x)
    torch.testing.assert_close(out, attn(x))
    torch.testing.assert_close(grad, ref_grad)


def test_mac_count_sees_the_op():
    """count_macs (a TorchFunctionMode) counts qkv_attention's two products: B H N^2 (D + D)."""
    from ebsparse.metrics.counting import count_macs

    attn = Attention(24, 2)
    c = count_macs(attn, torch.randn(3, 7, 24))
    assert c.attention_macs == 3 * 2 * 7 * 7 * (12 + 12)
