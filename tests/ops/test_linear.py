"""sparse_linear against its masked-dense reference, on every backend usable here."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.formats import build_index
from ebsparse.ops import sparse_linear, sparse_linear_reference
from tests.ops.helpers import DEVICE, backend_params, runs_on, tolerance

CPU = torch.device("cpu")
BACKENDS = backend_params("linear", CPU, torch.float32)
# The reference checks also run on the test device (CUDA where present: tools/gpu_check.sh).
DEVICE_BACKENDS = backend_params("linear", DEVICE, torch.float32)


def _case(n, k, m, density, dtype, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = torch.randn(m, k, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64) if bias else None
    mask = torch.rand(m, k, generator=g) < density
    return x, w, b, mask


def _check(backend, n, k, m, density, dtype, seed, bias, transpose_input=False, device=DEVICE):
    x64, w64, b64, mask = _case(n, k, m, density, dtype, seed, bias)
    x = x64.to(dtype).to(device).requires_grad_()
    if transpose_input:  # a non-contiguous view with the same values
        x = x64.to(dtype).to(device).t().contiguous().t().requires_grad_()
    w = w64.to(dtype).to(device).requires_grad_()
    b = b64.to(dtype).to(device).requires_grad_() if bias else None
    with runs_on(backend, "linear", ("forward", "backward")):
        y = sparse_linear(x, w, b, mask.to(device), backend=backend)
        grad = torch.randn_like(y)
        y.backward(grad)

    xr, wr = x64.detach().clone().requires_grad_(), w64.detach().clone().requires_grad_()
    br = b64.detach().clone().requires_grad_() if bias else None
    yr = sparse_linear_reference(xr, wr, br, mask)
    yr.backward(grad.double().cpu())
    tol = tolerance(dtype, k ** 0.5 * 3)
    torch.testing.assert_close(y.double().cpu(), yr, **tol)
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, **tolerance(dtype, m ** 0.5 * 3))
    torch.testing.assert_close(w.grad.double().cpu(), wr.grad, **tolerance(dtype, n ** 0.5 * 3))
    assert not w.grad.cpu()[~mask].any(), "grad-weight must be zero outside the pattern"
    if bias:
        torch.testing.assert_close(b.grad.double().cpu(), br.grad, **tolerance(dtype, n ** 0.5 * 3))


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@given(n=st.integers(1, 40), k=st.integers(1, 70), m=st.integers(1, 50),
       density=st.sampled_from([0.0, 0.05, 0.1, 0.5, 0.9, 1.0]) | st.floats(0, 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16), bias=st.booleans())
def test_matches_reference(backend, n, k, m, density, dtype, seed, bias):
    _check(backend, n, k, m, density, dtype, seed, bias)


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("n,k,m,density", [(64, 256, 96, 0.1), (33, 1000, 17, 0.05), (128, 64, 128, 0.5)])
def test_larger_shapes(backend, n, k, m, density):
    _check(backend, n, k, m, density, torch.float32, 0, True)


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
def test_non_contiguous_input(backend):
    _check(backend, 9, 13, 11, 0.4, torch.float32, 3, True, transpose_input=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_leading_dims(backend):
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    w = torch.randn(6, 8, dtype=torch.float64)
    mask = torch.rand(6, 8) < 0.5
    torch.testing.assert_close(sparse_linear(x, w, None, mask, backend=backend),
                               sparse_linear_reference(x, w, None, mask))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 9, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.rand(5, 9, generator=g) < 0.5
    assert torch.autograd.gradcheck(lambda x, w, b: sparse_linear(x, w, b, mask, backend=backend), (x, w, b))


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.bfloat16))
def test_bfloat16(backend):
    x64, w64, b64, mask = _case(16, 32, 24, 0.3, torch.bfloat16, 7, True)
    with runs_on(backend, "linear"):
        y = sparse_linear(x64.bfloat16(), w64.bfloat16(), b64.bfloat16(), mask, backend=backend)
    ref = sparse_linear_reference(x64, w64, b64, mask)
    torch.testing.assert_close(y.double(), ref, atol=0.2, rtol=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_weight_grad_is_full_gradient(backend):
    x = torch.randn(6, 10, dtype=torch.float64)
    w = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 10) < 0.3
    with runs_on(backend, "linear"):
        sparse_linear(x, w, None, mask, backend=backend, dense_weight_grad=True).sum().backward()
    full = torch.ones(6, 4, dtype=torch.float64).t() @ x
    torch.testing.assert_close(w.grad, full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_reused(backend):
    """One index serves many calls, and after the mask changes a stale index is refused rather
    than giving the old pattern's answer."""
    mask = torch.rand(5, 7) < 0.5
    index = build_index(mask)
    x, w = torch.randn(3, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    for _ in range(2):
        with runs_on(backend, "linear"):
            out = sparse_linear(x, w, None, mask, index=index, backend=backend)
        torch.testing.assert_close(out, sparse_linear_reference(x, w, None, mask))
    mask[0] = ~mask[0]
    with pytest.raises(ValueError, match="index: does not describe `mask`"):
        sparse_linear(x, w, None, mask, index=index, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_of_another_mask_is_refused(backend):
    """An index from another mask of the same shape used to run that mask's pattern on native and
    Triton (dense followed `mask`); an index of an equal mask is accepted."""
    mask, other = torch.zeros(4, 8, dtype=torch.bool), torch.zeros(4, 8, dtype=torch.bool)
    mask[:, :4], other[:, 4:] = True, True
    x, w = torch.randn(2, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="index: does not describe `mask`"):
        sparse_linear(x, w, None, mask, index=build_index(other), backend=backend)
    with runs_on(backend, "linear"):
        out = sparse_linear(x, w, None, mask, index=build_index(mask.clone()), backend=backend)
    torch.testing.assert_close(out, sparse_linear_reference(x, w, None, mask))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_dropped_weights_contribute_zero(backend):
    """Whatever a dropped weight holds (NaN, inf), it contributes exactly zero to the output and
    the gradients, on every backend alike."""
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 8, dtype=torch.float64)
    mask = torch.rand(4, 8, generator=torch.Generator().manual_seed(3)) < 0.5
    clean = torch.where(mask, w, 0.0)
    poisoned = clean.clone()
    poisoned[~mask] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64).repeat(8)[
        :int((~mask).sum())]
    poisoned.requires_grad_()
    with runs_on(backend, "linear", ("forward", "backward")):
        y = sparse_linear(x, poisoned, None, mask, backend=backend)
        y.square().sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), clean.clone().requires_grad_()
    yr = torch.nn.functional.linear(xr, wr)
    yr.square().sum().backward()
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(poisoned.grad, wr.grad * mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_gradient_raises(backend):
    """The op is differentiable once: create_graph=True through it raises instead of returning a
    wrong (zero) second-order gradient."""
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 8) < 0.5
    y = sparse_linear(x, w, None, mask, backend=backend)
    with pytest.raises(RuntimeError, match="sparse_linear: differentiable once only"):
        torch.autograd.grad(y.square().sum(), (x, w), create_graph=True)
    first = torch.autograd.grad(sparse_linear(x, w, None, mask, backend=backend).square().sum(), (x, w))
    assert all(not g.requires_grad for g in first)
