"""`sparse_linear` with a 2:4 mask on the Triton backend runs the tensor-core kernels
(ebsparse.triton.twofour_linear) for float32, bfloat16 and float16, forward and both gradients;
other masks and float64 keep the CSR gather kernels. Without a GPU, under the Triton interpreter."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebsparse import ops
from ebsparse.ops import sparse_linear, sparse_linear_reference
from tests.ops.helpers import DEVICE, backend_params, runs_on, tolerance

TRITON = [p for p in backend_params("linear", DEVICE, torch.bfloat16) if p.id == "triton"]
KERNELS = ("twofour_linear", "twofour_linear_grad_input", "twofour_linear_grad_weight")


@pytest.fixture
def tensor_core_calls(monkeypatch):
    """Names of the tensor-core kernels launched inside the test."""
    import ebsparse.triton as kernels

    calls = []
    for name in KERNELS:
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    return calls


def _case(n, k, m, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = torch.randn(m, k, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64) if bias else None
    return x, w, b, ops.prune_2_4(w, backend="dense")


@pytest.mark.parametrize("backend", TRITON)
@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])  # calls cleared per example
@given(n=st.integers(1, 24), groups=st.integers(1, 8), m=st.integers(1, 24), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), bias=st.booleans())
def test_2_4_mask_runs_the_tensor_core_kernels(backend, tensor_core_calls, n, groups, m, seed, dtype, bias):
    k = 4 * groups
    x64, w64, b64, mask = _case(n, k, m, seed, bias)
    x = x64.to(dtype).to(DEVICE).requires_grad_()
    w = torch.where(mask, w64, torch.nan).to(dtype).to(DEVICE).requires_grad_()  # NaN: never read
    b = b64.to(dtype).to(DEVICE).requires_grad_() if bias else None
    tensor_core_calls.clear()
    with runs_on(backend, "linear", ("forward", "backward")):
        y = sparse_linear(x, w, b, mask.to(DEVICE), backend=backend)
        grad = torch.randn_like(y)
        y.backward(grad)
    assert sorted(tensor_core_calls) == sorted(KERNELS)
    xr, wr = x64.clone().requires_grad_(), torch.where(mask, w64, 0.0).requires_grad_()
    br = b64.clone().requires_grad_() if bias else None
    yr = sparse_linear_reference(xr, wr, br, mask)
    yr.backward(grad.double().cpu())
    torch.testing.assert_close(y.double().cpu(), yr, **tolerance(dtype, k ** 0.5 * 3))
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, **tolerance(dtype, m ** 0.5 * 3))
    torch.testing.assert_close(w.grad.double().cpu(), wr.grad, **tolerance(dtype, n ** 0.5 * 3))
    assert not w.grad[~mask.to(DEVICE)].any()


@pytest.mark.parametrize("backend", TRITON)
def test_other_masks_and_float64_keep_the_gather_kernels(backend, tensor_core_calls):
    x, w, b, mask = _case(8, 16, 12, 0, True)
    unstructured = torch.rand(12, 16, generator=torch.Generator().manual_seed(1)) < 0.3
    for dtype, m in ((torch.float32, unstructured), (torch.float64, mask)):
        with runs_on(backend, "linear"):
            y = sparse_linear(x.to(dtype).to(DEVICE), w.to(dtype).to(DEVICE), b.to(dtype).to(DEVICE), m.to(DEVICE),
                              backend=backend)
        torch.testing.assert_close(y.double().cpu(), sparse_linear_reference(x, w, b, m), **tolerance(dtype, 10))
    assert tensor_core_calls == []


@pytest.mark.parametrize("backend", TRITON)
def test_meta_follows_mask_edits(backend, tensor_core_calls):
    x, w, b, mask = _case(6, 8, 4, 0, False)
    mask = mask.to(DEVICE)
    x, w = x.float().to(DEVICE), w.float().to(DEVICE)
    sparse_linear(x, w, None, mask, backend=backend)
    mask.copy_(~mask)  # the complement of a 2:4 mask is 2:4 too
    y = sparse_linear(x, w, None, mask, backend=backend)
    torch.testing.assert_close(y, sparse_linear_reference(x, w, None, mask), **tolerance(torch.float32, 3))
    mask[0, :4] = True  # no longer 2:4: the gather kernels take over
    tensor_core_calls.clear()
    y = sparse_linear(x, w, None, mask, backend=backend)
    torch.testing.assert_close(y, sparse_linear_reference(x, w, None, mask), **tolerance(torch.float32, 3))
    assert tensor_core_calls == []



CONV_KERNELS = ("twofour_conv2d", "twofour_conv2d_grad_input", "twofour_conv2d_grad_weight")


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_2_4_conv_runs_the_implicit_gemm_tensor_core_kernels(backend, dtype, monkeypatch):
    import ebsparse.triton as kernels

    calls = []
    for name in CONV_KERNELS:
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(2, 8, 6, 5, generator=g, dtype=torch.float64)
    w64 = torch.randn(6, 8, 3, 3, generator=g, dtype=torch.float64)
    b64 = torch.randn(6, generator=g, dtype=torch.float64)
    mask = ops.prune_2_4(w64, backend="dense")
    x64, w64, b64 = x64.to(dtype).double(), w64.to(dtype).double(), b64.to(dtype).double()
    x = x64.to(dtype).to(DEVICE).requires_grad_()
    w = torch.where(mask, w64, torch.nan).to(dtype).to(DEVICE).requires_grad_()
    b = b64.to(dtype).to(DEVICE).requires_grad_()
    with runs_on(backend, "conv2d", ("forward", "backward")):
        y = ops.sparse_conv2d(x, w, b, mask.to(DEVICE), 2, 1, backend=backend)
        grad = torch.randn_like(y)
        y.backward(grad)
    assert sorted(calls) == sorted(CONV_KERNELS)
    xr, br = x64.clone().requires_grad_(), b64.clone().requires_grad_()
    wr = torch.where(mask, w64, 0.0).requires_grad_()
    yr = ops.sparse_conv2d_reference(xr, wr, br, mask, 2, 1)
    yr.backward(grad.double().cpu())
    torch.testing.assert_close(y.double().cpu(), yr, **tolerance(dtype, 72 ** 0.5 * 3))
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, **tolerance(dtype, 54 ** 0.5 * 3))
    torch.testing.assert_close(w.grad.double().cpu(), wr.grad, **tolerance(dtype, 30 ** 0.5 * 3))
    assert not w.grad.cpu()[~mask].any()
