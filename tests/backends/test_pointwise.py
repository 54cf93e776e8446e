"""1x1 convolutions as batched matrix products (ebsparse.backends.pointwise), the dense path of a
sparse layer: equal to F.conv2d in value and gradients, chosen exactly where it applies, and what
SparseConv2d's plain dense path and the dense backend's op path run for 1x1 layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.backends.pointwise import dense_conv2d, is_pointwise, pointwise_conv2d, pointwise_conv2d_grads
from ebsparse.nn import SparseConv2d
from ebsparse.ops import sparse_conv2d
from ebsparse.ops.reference import sparse_conv2d_reference
from tests.ops.helpers import runs_on, tolerance


def _tensors(n, ci, co, h, w, dtype, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=g, dtype=dtype)
    weight = torch.randn(co, ci, 1, 1, generator=g, dtype=dtype)
    b = torch.randn(co, generator=g, dtype=dtype) if bias else None
    grad = torch.randn(n, co, h, w, generator=g, dtype=dtype)
    return x, weight, b, grad


def _grads(fn, x, weight, bias, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    out = fn(*leaves[:2], leaves[2] if bias is not None else None)
    out.backward(grad)
    return out.detach(), [t.grad for t in leaves]


@given(n=st.integers(1, 3), ci=st.integers(1, 9), co=st.integers(1, 9), h=st.integers(1, 7), w=st.integers(1, 7),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16), bias=st.booleans())
def test_matches_conv2d_with_gradients(n, ci, co, h, w, dtype, seed, bias):
    x, weight, b, grad = _tensors(n, ci, co, h, w, dtype, seed, bias)
    assert is_pointwise(x, weight, (1, 1), (0, 0))
    out, grads = _grads(pointwise_conv2d, x, weight, b, grad)
    ref, ref_grads = _grads(F.conv2d, x.double(), weight.double(), b.double() if bias else None, grad.double())
    tol = tolerance(dtype, max(ci, n * h * w) ** 0.5 * 3)
    torch.testing.assert_close(out.double(), ref, **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **tol)
    # the backward's function on its own (what the dense backend's op path calls) gives the same
    gi, gw = pointwise_conv2d_grads(grad, x, weight, True, True)
    torch.testing.assert_close(gi.double(), ref_grads[0], **tol)
    torch.testing.assert_close(gw.double(), ref_grads[1], **tol)
    assert pointwise_conv2d_grads(grad, x, weight, False, False) == (None, None)


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 1, 1, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(pointwise_conv2d, (x, weight, bias))
    assert torch.autograd.gradcheck(lambda a, b: pointwise_conv2d(a, b, None), (x, weight))


@pytest.mark.parametrize("case,expected", [
    ("1x1", True), ("3x3", False), ("stride 2", False), ("padding 1", False), ("channels last", False),
    ("bfloat16", False), ("3-d input", False),
])
def test_is_pointwise_only_where_the_products_apply(case, expected):
    x = torch.randn(2, 4, 5, 5)
    weight = torch.randn(3, 4, 1, 1)
    stride, padding = (1, 1), (0, 0)
    if case == "3x3":
        weight = torch.randn(3, 4, 3, 3)
    elif case == "stride 2":
        stride = (2, 2)
    elif case == "padding 1":
        padding = (1, 1)
    elif case == "channels last":
        x = x.to(memory_format=torch.channels_last)
    elif case == "bfloat16":
        x, weight = x.bfloat16(), weight.bfloat16()
    elif case == "3-d input":
        x = x[0]
    assert is_pointwise(x, weight, stride, padding) is expected
    if case != "3-d input":  # dense_conv2d is F.conv2d wherever the products do not apply
        torch.testing.assert_close(dense_conv2d(x, weight, None, stride, padding, (1, 1)),
                                   F.conv2d(x, weight, None, stride, padding), atol=2e-2, rtol=2e-2)


def test_sparse_conv2d_dense_path_runs_the_products_and_masks():
    torch.manual_seed(0)
    mask = torch.rand(6, 5, 1, 1, generator=torch.Generator().manual_seed(1)) < 0.6
    layer = SparseConv2d(5, 6, 1, dtype=torch.float64, mask=mask, backend="dense")
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight))  # nonzero outside the mask: must not count
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    g = torch.randn(3, 6, 4, 2, dtype=torch.float64)
    with runs_on("dense", "conv2d", phases=("forward", "backward")):
        out = layer(x)
        assert type(out.grad_fn).__name__ == "_PointwiseConv2dBackward"  # the products ran, not F.conv2d
        out.backward(g)
    ref = sparse_conv2d_reference(xr, w, b, mask)
    ref.backward(g)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(layer.bias.grad, b.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(layer.weight.grad[mask], w.grad[mask], atol=1e-12, rtol=1e-10)
    assert not layer.weight.grad[~mask].any()


@pytest.mark.parametrize("dense_weight_grad", [False, True])
def test_dense_backend_op_path_on_1x1(dense_weight_grad, monkeypatch):
    """The op path (RigL's update step asks it for the full weight gradient) runs the products too."""
    import ebsparse.backends.dense as dense

    ran = []
    monkeypatch.setattr(dense, "pointwise_conv2d_grads",
                        lambda *a: ran.append("grads") or pointwise_conv2d_grads(*a))
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(4, 6, 1, 1, generator=g) < 0.5
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 6, 1, 1, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    grad = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=g)
    with runs_on("dense", "conv2d", phases=("forward", "backward")):
        sparse_conv2d(x, w, b, mask, backend="dense", dense_weight_grad=dense_weight_grad).backward(grad)
    assert ran == ["grads"]
    sparse_conv2d_reference(xr, wr, br, mask).backward(grad)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(b.grad, br.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w.grad[mask], wr.grad[mask], atol=1e-12, rtol=1e-10)
    if dense_weight_grad:  # the full gradient of the unmasked product, off the mask too
        full = torch.einsum("nohw,nihw->oi", grad, xr.detach()).view_as(w)
        torch.testing.assert_close(w.grad, full, atol=1e-12, rtol=1e-10)
        assert w.grad[~mask].any()
    else:
        assert not w.grad[~mask].any()


def test_profiler_scope_only_while_a_profiler_records(monkeypatch):
    """The products' `record_function` scope (which step breakdowns read) costs ~45 us per opening:
    it is opened only while a profiler records."""
    import ebsparse.backends.pointwise as pointwise

    opened = []
    real = torch.profiler.record_function
    monkeypatch.setattr(torch.profiler, "record_function", lambda name: opened.append(name) or real(name))
    x = torch.randn(2, 3, 2, 2, requires_grad=True)
    w = torch.randn(4, 3, 1, 1, requires_grad=True)
    pointwise.pointwise_conv2d(x, w, None).sum().backward()
    assert opened == []
    with torch.profiler.profile() as prof:
        pointwise.pointwise_conv2d(x, w, None).sum().backward()
    assert opened == [pointwise.PROFILER_SCOPE] * 2  # forward, and the backward's two products
    assert sum(e.name == pointwise.PROFILER_SCOPE for e in prof.events()) == 2
