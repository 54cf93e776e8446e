"""The semi-structured backend's host logic, on the CPU: which calls it takes (2:4 masks, shapes the
kernel's multiples allow), when grad-input runs sparse (transposable masks), and the implicit-GEMM
layouts of conv, checked against the reference with the sparse compression replaced by the identity
(dense GEMMs) and every operand handed to it checked to be 2:4."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends.semi_structured import SemiStructuredBackend, operand_reasons
from ebsparse.formats import build_index
from ebsparse.formats.transposable import transposable_2_4_mask
from ebsparse.formats.twofour import is_2_4_mask, magnitude_2_4_rows, rows_view
from ebsparse.ops.inputs import Conv2dInputs, LinearInputs
from ebsparse.ops.reference import sparse_conv2d_reference, sparse_linear_reference
from ebsparse.ops.conv import check_conv2d_args

CPU = torch.device("cpu")


class FakeCompression:
    """Stands in for torch.sparse.to_sparse_semi_structured: checks its operand is 2:4 along rows
    (zeros where dropped) and returns it dense."""

    def __init__(self):
        self.shapes = []

    def __call__(self, dense):
        assert dense.is_contiguous()
        assert is_2_4_mask((dense != 0) | _ties(dense)), "operand not 2:4"
        self.shapes.append(tuple(dense.shape))
        return dense


def _ties(dense):
    """Where a group keeps fewer than 2 nonzeros (a kept weight that is exactly zero), count the
    first zeros as kept so the check is about the pattern, not the values."""
    groups = (dense != 0).reshape(dense.shape[0], -1, 4)
    short = (2 - groups.sum(-1)).clamp(min=0)
    zeros = ~groups
    first = zeros.cumsum(-1) <= short.unsqueeze(-1)
    return (zeros & first).reshape(dense.shape)


def backend():
    fake = FakeCompression()
    return SemiStructuredBackend(to_sparse=fake, device_check=False), fake


def test_unavailable_without_cuda_and_for_float32():
    reasons = SemiStructuredBackend().unavailable_reasons("linear", CPU, torch.float32)
    assert any("CUDA" in r for r in reasons) and any("float32" in r for r in reasons)
    assert "has no prune_2_4 kernel" in SemiStructuredBackend().unavailable_reasons("prune_2_4", CPU,
                                                                                  torch.bfloat16)[0]


def test_operand_multiples_come_from_torchs_class():
    assert operand_reasons(64, 64, torch.bfloat16, "w") == []
    assert "multiples" in operand_reasons(64, 20, torch.bfloat16, "w")[0]
    assert operand_reasons(64, 64, torch.float64, "w")


def _linear(m, k, n, mask_kind, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g, dtype=torch.float64)
    mask = {"2:4": magnitude_2_4_rows, "transposable": transposable_2_4_mask,
            "unstructured": lambda w: torch.rand(w.shape, generator=g) < 0.5}[mask_kind](w)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64)
    weight = torch.where(mask, w, torch.nan)  # dropped entries never count
    inputs = LinearInputs(x.to(dtype), weight.to(dtype), b.to(dtype), mask, build_index(mask))
    return inputs, (x, torch.where(mask, w, 0.0), b, mask)


@pytest.mark.parametrize("kind,sparse_grad_input", [("2:4", False), ("transposable", True)])
def test_linear_step_matches_reference(kind, sparse_grad_input):
    be, fake = backend()
    inputs, (x, w, b, mask) = _linear(64, 128, 24, kind)
    y = be.linear_forward(inputs)
    dy = torch.randn_like(y)
    gi, gw = be.linear_backward(inputs, dy, True, True)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    yr = sparse_linear_reference(xr, wr, b, mask)
    yr.backward(dy.double())
    tol = dict(atol=0.1, rtol=0.03)
    torch.testing.assert_close(y.double(), yr, **tol)
    torch.testing.assert_close(gi.double(), xr.grad, **tol)
    torch.testing.assert_close(gw.double(), wr.grad, **tol)
    assert not gw[~mask].any()
    assert fake.shapes == ([(64, 128), (128, 64)] if sparse_grad_input else [(64, 128)])


def test_linear_grad_weight_uses_the_triton_masked_epilogue_where_triton_runs(monkeypatch):
    import ebsparse.triton as kernels

    if kernels.unavailable_reasons(CPU):
        pytest.skip("Triton cannot run here (interpreter off)")
    calls = []
    fn = kernels.twofour_linear_grad_weight
    monkeypatch.setattr(kernels, "twofour_linear_grad_weight", lambda *a: calls.append(1) or fn(*a))
    be, _ = backend()
    inputs, (x, w, b, mask) = _linear(32, 64, 16, "2:4")
    y = be.linear_forward(inputs)
    _, gw = be.linear_backward(inputs, torch.ones_like(y), False, True)
    assert calls == [1]
    ref = torch.where(mask, torch.ones(16, 32, dtype=torch.float64).T @ x.bfloat16().double(), 0.0)
    torch.testing.assert_close(gw.double(), ref, atol=0.1, rtol=0.02)


def test_linear_refuses_non_2_4_masks_and_bad_multiples_with_reasons():
    be, _ = backend()
    inputs, _ = _linear(64, 128, 8, "unstructured")
    with pytest.raises(RuntimeError, match="not 2:4"):
        be.linear_forward(inputs)
    inputs, _ = _linear(64, 20, 8, "2:4")
    with pytest.raises(RuntimeError, match=r"multiples of \("):
        be.linear_forward(inputs)


@settings(max_examples=12)
@given(kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1]),
       dilation=st.sampled_from([1, 2]), transposable=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_as_implicit_gemm_matches_reference(kernel, stride, padding, dilation, transposable, seed):
    g = torch.Generator().manual_seed(seed)
    co, ci, n, hw = 32, 64 if kernel == 1 else 32, 2, 7
    w = torch.randn(co, ci, kernel, kernel, generator=g, dtype=torch.float64)
    mask = transposable_2_4_mask(w) if transposable else rows_view_mask(w)
    x = torch.randn(n, ci, hw, hw, generator=g, dtype=torch.float64)
    geometry = check_conv2d_args(x, w, None, mask, stride, padding, dilation)
    be, fake = backend()
    x, w = x.bfloat16().double(), w.bfloat16().double()  # the reference sees the rounded inputs
    inputs = Conv2dInputs(x.bfloat16(), torch.where(mask, w, torch.nan).bfloat16(), None, mask, build_index(mask),
                          *geometry)
    y = be.conv2d_forward(inputs)
    dy = torch.randn_like(y)
    gi, gw = be.conv2d_backward(inputs, dy, True, True)
    xr, wr = x.clone().requires_grad_(), torch.where(mask, w, 0.0).requires_grad_()
    yr = sparse_conv2d_reference(xr, wr, None, mask, *geometry)
    yr.backward(dy.double())
    tol = dict(atol=0.25, rtol=0.02)  # bf16 outputs of sums over up to 288 products
    torch.testing.assert_close(y.double(), yr, **tol)
    torch.testing.assert_close(gi.double(), xr.grad, **tol)
    torch.testing.assert_close(gw.double(), wr.grad, **tol)
    assert not gw[~mask].any()
    assert y.permute(0, 2, 3, 1).is_contiguous()  # channels-last output
    assert len(fake.shapes) == (2 if transposable else 1)


def rows_view_mask(w):
    from ebsparse.formats.twofour import from_rows_view

    return from_rows_view(magnitude_2_4_rows(rows_view(w)), w.shape)
