"""Bad input raises a clear error naming the argument, before any kernel runs."""

import dataclasses

import pytest
import torch

import ebsparse
from ebsparse import SparseConv2d, SparseLinear
from ebsparse.formats import build_index
from ebsparse.formats.block import build_block_index
from ebsparse.formats.index import PatternIndex
from ebsparse.ops import block_sparse_linear, prune_2_4, sparse_conv2d, sparse_linear


def _linear_args():
    return torch.randn(3, 8), torch.randn(4, 8), torch.randn(4), torch.rand(4, 8) < 0.5


@pytest.mark.parametrize("mutate,exc,pattern", [
    (lambda a: (a[0].double(), *a[1:]), TypeError, "input: expected dtype torch.float32"),
    (lambda a: (torch.randn(3, 7), *a[1:]), ValueError, r"input: expected shape \(\.\.\., 8\)"),
    (lambda a: (a[0], torch.randn(4, 8, 1), *a[2:]), ValueError, "weight: expected 2 dims"),
    (lambda a: (a[0], a[1], torch.randn(5), a[3]), ValueError, r"bias: expected shape \(4,\)"),
    (lambda a: (*a[:3], torch.ones(4, 8)), TypeError, "mask: expected a bool tensor"),
    (lambda a: (*a[:3], torch.ones(4, 7, dtype=torch.bool)), ValueError, r"mask: expected shape \(4, 8\)"),
    (lambda a: (a[0].int(), *a[1:]), TypeError, "input: expected a floating-point tensor"),
    (lambda a: ([1.0], *a[1:]), TypeError, "input: expected a torch.Tensor"),
])
def test_linear_errors(mutate, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sparse_linear(*mutate(_linear_args()))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend: expected one of"):
        sparse_linear(*_linear_args(), backend="nope")


@pytest.mark.parametrize("index", ["abc", 3, (torch.zeros(5, dtype=torch.int32),) * 4])
def test_index_of_the_wrong_type_names_the_argument(index):
    with pytest.raises(TypeError, match="index: expected a PatternIndex"):
        sparse_linear(*_linear_args(), index=index, backend="dense")
    x, w = torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3)
    with pytest.raises(TypeError, match="index: expected a PatternIndex"):
        sparse_conv2d(x, w, None, torch.ones_like(w, dtype=torch.bool), index=index, backend="dense")


def test_backend_env_override(monkeypatch):
    monkeypatch.setenv("EBSPARSE_BACKEND", "dense")
    x, w, b, mask = _linear_args()
    torch.testing.assert_close(sparse_linear(x, w, b, mask), torch.nn.functional.linear(x, w * mask, b))
    monkeypatch.setenv("EBSPARSE_BACKEND", "nope")
    with pytest.raises(ValueError, match="backend"):
        sparse_linear(x, w, b, mask)


def test_requested_backend_that_cannot_run_raises_with_reasons():
    x, w, b, mask = _linear_args()
    with pytest.raises(RuntimeError, match="backend 'native' cannot run linear.*bfloat16"):
        sparse_linear(x.bfloat16(), w.bfloat16(), b.bfloat16(), mask, backend="native")


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(stride=0), ValueError, "stride: expected values >= 1"),
    (dict(padding=-1), ValueError, "padding: expected values >= 0"),
    (dict(dilation=(1, 0)), ValueError, "dilation: expected values >= 1"),
    (dict(stride="x"), TypeError, "stride: expected an int or a pair"),
    (dict(stride=(1.9, 1)), TypeError, "stride: expected an int or a pair"),  # was truncated to 1
    (dict(padding=0.5), TypeError, "padding: expected an int or a pair"),
])
def test_conv_bad_geometry(kwargs, exc, pattern):
    x, w = torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3)
    with pytest.raises(exc, match=pattern):
        sparse_conv2d(x, w, None, torch.ones_like(w, dtype=torch.bool), **kwargs)


def test_conv_shape_errors():
    w = torch.randn(2, 4, 3, 3)
    mask = torch.ones_like(w, dtype=torch.bool)
    with pytest.raises(ValueError, match="input: expected 4 channels"):
        sparse_conv2d(torch.randn(1, 3, 5, 5), w, None, mask)
    with pytest.raises(ValueError, match="input: spatial size .* too small"):
        sparse_conv2d(torch.randn(1, 4, 2, 2), w, None, mask)
    with pytest.raises(ValueError, match="input: expected 4 dims"):
        sparse_conv2d(torch.randn(4, 5, 5), w, None, mask)
    empty = torch.randn(2, 4, 0, 3)  # nn.Conv2d refuses it; the native kernels ran it as a 0-row kernel
    with pytest.raises(ValueError, match="weight: expected a kernel of at least 1x1"):
        sparse_conv2d(torch.randn(1, 4, 5, 5), empty, None, torch.ones_like(empty, dtype=torch.bool), padding=1)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_module_geometry_is_checked_at_construction():
    with pytest.raises(TypeError, match="stride: expected an int or a pair"):
        SparseConv2d(4, 4, 3, stride=1.5)
    with pytest.raises(ValueError, match="kernel_size: expected values >= 1"):
        SparseConv2d(4, 6, (0, 3), padding=1)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_empty_weights_name_the_argument():
    with pytest.raises(ValueError, match="SparseLinear: a sparse layer needs at least one weight"):
        SparseLinear(0, 4)
    with pytest.raises(ValueError, match="weight: 2:4 needs a non-empty weight"):
        prune_2_4(torch.randn(0, 8))
    with pytest.raises(ValueError, match="weight: a sparse layer needs at least one weight"):
        sparse_linear(torch.randn(3, 0), torch.randn(4, 0), None, torch.ones(4, 0, dtype=torch.bool))
    report = ebsparse.sparsify(torch.nn.Sequential(torch.nn.Linear(0, 4)), density=0.5)
    assert report.converted == [] and "empty weight" in report.skipped["0"]


@pytest.mark.parametrize("kind", ["pattern", "block"])
def test_index_whose_csc_is_another_masks_is_refused(kind):
    """The forward reads the CSR, the input gradient the CSC: an index with the right CSR and
    another mask's CSC gave a right output and a wrong input gradient."""
    torch.manual_seed(0)
    if kind == "pattern":
        w = torch.randn(6, 8)
        mask, other = torch.rand(6, 8) < 0.5, torch.rand(6, 8) < 0.5
        own, foreign = build_index(mask), build_index(other)
        index = PatternIndex(own.rows, own.cols, own.row_ptr, own.col_idx, foreign.col_ptr, foreign.row_idx)
        call = lambda: sparse_linear(torch.randn(3, 8), w, None, mask, index=index, backend="dense")
    else:
        w = torch.randn(32, 32)
        grid, other = torch.tensor([[True, False], [False, True]]), torch.tensor([[False, True], [True, False]])
        mask, alt = (g.repeat_interleave(16, 0).repeat_interleave(16, 1) for g in (grid, other))
        own, foreign = build_block_index(mask, (16, 16)), build_block_index(alt, (16, 16))
        index = dataclasses.replace(own, bcol_ptr=foreign.bcol_ptr, brow_idx=foreign.brow_idx, mask=None)
        call = lambda: block_sparse_linear(torch.randn(3, 32), w, None, mask, (16, 16), index=index,
                                           backend="dense")
    with pytest.raises(ValueError, match="index: does not describe `mask`"):
        call()


def test_native_op_direct_call_checks_in_cpp():
    """Direct torch.ops callers get a RuntimeError from the C++ checks, not a crash."""
    import ebsparse.backends.extension as ext

    if ext.extension_error() is not None:
        pytest.skip(ext.extension_error())
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="row_ptr: expected 5 entries"):
        torch.ops.ebsparse.csr_linear(x, w, None, torch.zeros(3, dtype=torch.int32), torch.zeros(0, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="col_idx: expected a 1-D int32"):
        torch.ops.ebsparse.csr_linear(x, w, None, torch.zeros(5, dtype=torch.int32), torch.zeros(0))
    # Indices out of range or offsets going backwards are caught before any kernel reads them.
    rp = torch.tensor([0, 1, 1, 1, 2], dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"col_idx: expected values in \[0, 8\), got 8"):
        torch.ops.ebsparse.csr_linear(x, w, None, rp, torch.tensor([0, 8], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="row_ptr: expected non-decreasing values"):
        torch.ops.ebsparse.csr_linear(x, w, None, torch.tensor([0, 2, 1, 1, 2], dtype=torch.int32),
                                      torch.tensor([0, 1], dtype=torch.int32))
    dy = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="input: expected \\(3, 8\\)"):
        torch.ops.ebsparse.csr_linear_backward(dy, torch.randn(3, 7), w, rp, torch.tensor([0, 1], dtype=torch.int32),
                                               True, True)


def test_native_conv_pattern_values_checked_even_when_remembered():
    """The conv ops remember patterns that passed their checks; an in-place edit must be checked again."""
    import ebsparse.backends.extension as ext

    if ext.extension_error() is not None:
        pytest.skip(ext.extension_error())
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    one = [1, 1]
    rp = torch.tensor([0, 1, 1, 2], dtype=torch.int32)
    ci = torch.tensor([0, 18], dtype=torch.int32)  # 18 = 2 * 3 * 3 is out of range
    with pytest.raises(RuntimeError, match=r"col_idx: expected values in \[0, 18\), got 18"):
        torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, one, one, one)
    ci[1] = 17
    torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, one, one, one)  # valid now, and remembered
    ci[1] = -1
    with pytest.raises(RuntimeError, match=r"col_idx: expected values in \[0, 18\), got -1"):
        torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, one, one, one)
    rp[1] = 2
    rp[2] = 1
    with pytest.raises(RuntimeError, match="row_ptr: expected non-decreasing values"):
        torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, one, one, one)


def test_native_patterns_made_in_inference_mode_are_never_remembered():
    """Inference tensors have no version counter, so a remembered check or layout could not see an
    in-place edit made in inference mode: the ops build theirs on every call."""
    import ebsparse.backends.extension as ext

    if ext.extension_error() is not None:
        pytest.skip(ext.extension_error())
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    one = [1, 1]
    with torch.inference_mode():
        rp = torch.tensor([0, 1, 1, 2], dtype=torch.int32)
        ci = torch.tensor([0, 17], dtype=torch.int32)
        torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, one, one, one)
        ci[1] = 18
        with pytest.raises(RuntimeError, match=r"col_idx: expected values in \[0, 18\), got 18"):
            torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, one, one, one)
        ci[1] = 5
        got = torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, one, one, one)
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[0, 0] = mask[2, 5] = True
    expected = torch.nn.functional.conv2d(x, w * mask.view_as(w), padding=1)
    torch.testing.assert_close(got, expected)
