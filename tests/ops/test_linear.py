"""sparse_linear against its masked-dense reference, on every backend usable here."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.formats import build_index
from ebsparse.ops import sparse_linear, sparse_linear_reference
from tests.ops.helpers import tolerance, usable_backends

CPU = torch.device("cpu")
BACKENDS = usable_backends("linear", CPU, torch.float32)


def _case(n, k, m, density, dtype, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = torch.randn(m, k, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64) if bias else None
    mask = torch.rand(m, k, generator=g) < density
    return x, w, b, mask


def _check(backend, n, k, m, density, dtype, seed, bias, transpose_input=False):
    x64, w64, b64, mask = _case(n, k, m, density, dtype, seed, bias)
    x = x64.to(dtype).requires_grad_()
    if transpose_input:  # a non-contiguous view with the same values
        x = x64.to(dtype).t().contiguous().t().requires_grad_()
    w = w64.to(dtype).requires_grad_()
    b = b64.to(dtype).requires_grad_() if bias else None
    y = sparse_linear(x, w, b, mask, backend=backend)
    grad = torch.randn_like(y)
    y.backward(grad)

    xr, wr = x64.detach().clone().requires_grad_(), w64.detach().clone().requires_grad_()
    br = b64.detach().clone().requires_grad_() if bias else None
    yr = sparse_linear_reference(xr, wr, br, mask)
    yr.backward(grad.double())
    tol = tolerance(dtype, k ** 0.5 * 3)
    torch.testing.assert_close(y.double(), yr, **tol)
    torch.testing.assert_close(x.grad.double(), xr.grad, **tolerance(dtype, m ** 0.5 * 3))
    torch.testing.assert_close(w.grad.double(), wr.grad, **tolerance(dtype, n ** 0.5 * 3))
    assert not w.grad[~mask].any(), "grad-weight must be zero outside the pattern"
    if bias:
        torch.testing.assert_close(b.grad.double(), br.grad, **tolerance(dtype, n ** 0.5 * 3))


@pytest.mark.parametrize("backend", BACKENDS)
@given(n=st.integers(1, 40), k=st.integers(1, 70), m=st.integers(1, 50),
       density=st.sampled_from([0.0, 0.05, 0.1, 0.5, 0.9, 1.0]) | st.floats(0, 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16), bias=st.booleans())
def test_matches_reference(backend, n, k, m, density, dtype, seed, bias):
    _check(backend, n, k, m, density, dtype, seed, bias)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,k,m,density", [(64, 256, 96, 0.1), (33, 1000, 17, 0.05), (128, 64, 128, 0.5)])
def test_larger_shapes(backend, n, k, m, density):
    _check(backend, n, k, m, density, torch.float32, 0, True)


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", usable_backends("linear", CPU, torch.bfloat16))
def test_bfloat16(backend):
    x64, w64, b64, mask = _case(16, 32, 24, 0.3, torch.bfloat16, 7, True)
    y = sparse_linear(x64.bfloat16(), w64.bfloat16(), b64.bfloat16(), mask, backend=backend)
    ref = sparse_linear_reference(x64, w64, b64, mask)
    torch.testing.assert_close(y.double(), ref, atol=0.2, rtol=0.05)


def test_dense_weight_grad_is_full_gradient():
    x = torch.randn(6, 10, dtype=torch.float64)
    w = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 10) < 0.3
    sparse_linear(x, w, None, mask, dense_weight_grad=True).sum().backward()
    full = torch.ones(6, 4, dtype=torch.float64).t() @ x
    torch.testing.assert_close(w.grad, full)


def test_index_reused():
    mask = torch.rand(5, 7) < 0.5
    index = build_index(mask)
    x, w = torch.randn(3, 7), torch.randn(5, 7)
    torch.testing.assert_close(sparse_linear(x, w, None, mask, index=index, backend="dense"),
                               sparse_linear_reference(x, w, None, mask))
