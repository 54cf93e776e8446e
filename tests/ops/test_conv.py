"""sparse_conv2d against its masked-dense reference, on every backend usable here."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.ops import sparse_conv2d, sparse_conv2d_reference
from tests.ops.helpers import DEVICE, backend_params, runs_on, tolerance

CPU = torch.device("cpu")
BACKENDS = backend_params("conv2d", CPU, torch.float32)
# The reference checks also run on the test device (CUDA where present: tools/gpu_check.sh).
DEVICE_BACKENDS = backend_params("conv2d", DEVICE, torch.float32)


def _interpreted() -> bool:
    """Whether Triton kernels run in its (slow) CPU interpreter here."""
    return not torch.cuda.is_available()


def _check(backend, n, ci, co, h, w, k, stride, padding, dilation, density, dtype, seed, bias,
           channels_last=False, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randn(n, ci, h, w, generator=g, dtype=torch.float64)
    w64 = torch.randn(co, ci, k[0], k[1], generator=g, dtype=torch.float64)
    b64 = torch.randn(co, generator=g, dtype=torch.float64) if bias else None
    mask = torch.rand(co, ci, k[0], k[1], generator=g) < density
    x = x64.to(dtype).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    wt = w64.to(dtype).to(device).requires_grad_()
    b = b64.to(dtype).to(device).requires_grad_() if bias else None
    with runs_on(backend, "conv2d", ("forward", "backward")):
        y = sparse_conv2d(x, wt, b, mask.to(device), stride, padding, dilation, backend=backend)
        grad = torch.randn_like(y)
        y.backward(grad)
    xr, wr = x64.detach().clone().requires_grad_(), w64.detach().clone().requires_grad_()
    br = b64.detach().clone().requires_grad_() if bias else None
    yr = sparse_conv2d_reference(xr, wr, br, mask, stride, padding, dilation)
    yr.backward(grad.double().cpu())
    fan = (ci * k[0] * k[1]) ** 0.5 * 3
    torch.testing.assert_close(y.double().cpu(), yr, **tolerance(dtype, fan))
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, **tolerance(dtype, (co * k[0] * k[1]) ** 0.5 * 3))
    torch.testing.assert_close(wt.grad.double().cpu(), wr.grad, **tolerance(dtype, (n * h * w) ** 0.5 * 3))
    assert not wt.grad.cpu()[~mask].any(), "grad-weight must be zero outside the pattern"
    if bias:
        torch.testing.assert_close(b.grad.double().cpu(), br.grad, **tolerance(dtype, (n * h * w) ** 0.5 * 3))


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@given(n=st.integers(1, 3), ci=st.integers(1, 9), co=st.integers(1, 9), h=st.integers(1, 13),
       w=st.integers(1, 13), k=st.sampled_from([(1, 1), (3, 3), (5, 5), (1, 3), (3, 2)]),
       stride=st.sampled_from([1, 2, (1, 2)]), padding=st.sampled_from([0, 1, 2, (1, 0)]),
       dilation=st.sampled_from([1, 2]),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0, 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16), bias=st.booleans())
def test_matches_reference(backend, n, ci, co, h, w, k, stride, padding, dilation, density, dtype, seed, bias):
    kh, kw = k
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    # keep only geometries with a non-empty output
    if h + 2 * ph - dilation * (kh - 1) < 1 or w + 2 * pw - dilation * (kw - 1) < 1:
        return
    _check(backend, n, ci, co, h, w, k, stride, padding, dilation, density, dtype, seed, bias)


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("shape", [
    # n, ci, co, h, w, k, stride, padding, dilation, density
    (2, 32, 48, 16, 16, (3, 3), 1, 1, 1, 0.1),
    (1, 17, 5, 13, 9, (3, 3), 2, 1, 1, 0.3),
    (2, 64, 64, 8, 8, (1, 1), 1, 0, 1, 0.05),
    (1, 8, 8, 12, 12, (3, 3), 1, 2, 2, 0.5),
])
def test_larger_shapes(backend, shape):
    if backend == "triton" and _interpreted() and shape[1] * shape[2] * shape[3] * shape[4] > 300_000:
        pytest.skip("too slow for the Triton interpreter; the smaller shapes cover the same loops")
    _check(backend, *shape, torch.float32, 0, True)


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
def test_channels_last_input(backend):
    _check(backend, 2, 8, 6, 7, 9, (3, 3), 1, 1, 1, 0.4, torch.float32, 5, True, channels_last=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.rand(4, 3, 3, 3, generator=g) < 0.5
    # Under the Triton interpreter each call takes ~0.1 s: check random projections (fast mode).
    assert torch.autograd.gradcheck(
        lambda x, w, b: sparse_conv2d(x, w, b, mask, 2, 1, 1, backend=backend), (x, w, b),
        fast_mode=backend == "triton" and _interpreted())


@pytest.mark.parametrize("backend", backend_params("conv2d", CPU, torch.bfloat16))
def test_bfloat16(backend):
    x, w = torch.randn(2, 8, 6, 6, dtype=torch.float64), torch.randn(4, 8, 3, 3, dtype=torch.float64)
    mask = torch.rand(4, 8, 3, 3) < 0.4
    with runs_on(backend, "conv2d"):
        y = sparse_conv2d(x.bfloat16(), w.bfloat16(), None, mask, 1, 1, backend=backend)
    torch.testing.assert_close(y.double(), sparse_conv2d_reference(x, w, None, mask, 1, 1), atol=0.3, rtol=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_dropped_weights_contribute_zero(backend):
    """Whatever a dropped weight holds (NaN, inf), it contributes exactly zero on every backend."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.rand(3, 4, 3, 3, generator=g) < 0.5
    clean = torch.where(mask, torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=g), 0.0)
    poisoned = clean.clone()
    poisoned[~mask] = float("nan")
    poisoned[0, 0][~mask[0, 0]] = float("inf")
    poisoned.requires_grad_()
    with runs_on(backend, "conv2d", ("forward", "backward")):
        y = sparse_conv2d(x, poisoned, None, mask, 1, 1, backend=backend)
        y.square().sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), clean.clone().requires_grad_()
    yr = torch.nn.functional.conv2d(xr, wr, None, 1, 1)
    yr.square().sum().backward()
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(poisoned.grad, wr.grad * mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_gradient_raises(backend):
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 2, 3, 3) < 0.5
    y = sparse_conv2d(x, w, None, mask, 1, 1, backend=backend)
    with pytest.raises(RuntimeError, match="sparse_conv2d: differentiable once only"):
        torch.autograd.grad(y.square().sum(), (x, w), create_graph=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_of_another_mask_is_refused(backend):
    from ebsparse.formats import build_index

    x, w = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    mask = torch.rand(3, 2, 3, 3) < 0.5
    with pytest.raises(ValueError, match="index: does not describe `mask`"):
        sparse_conv2d(x, w, None, mask, 1, 1, index=build_index(~mask), backend=backend)
