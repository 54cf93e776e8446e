"""The Triton kernels of ebsparse.triton against masked-dense PyTorch.

On a machine without a GPU they run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so the shapes are small. Odd sizes, empty rows, density 0 and 1, float32 and
float64 (bfloat16 and float16 against float32 math); weight entries outside the pattern are NaN, so
reading one would show.
"""

from __future__ import annotations

import pytest
import torch

from ebsparse import triton as tk

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REASONS = tk.unavailable_reasons(DEVICE)
pytestmark = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))

# (N, K, M): a single element, odd sizes, more kept entries per row than one BLOCK_J step (32),
# more rows n than one BLOCK_N step (64), and an empty batch.
SHAPES = [(1, 1, 1), (7, 13, 5), (66, 34, 3), (0, 8, 3)]
DENSITIES = [0.0, 0.4, 1.0]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def compressed(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ptr, idx) int32 of the rows of a bool mask, indices sorted within each row."""
    ptr = torch.zeros(mask.shape[0] + 1, dtype=torch.int32, device=mask.device)
    ptr[1:] = mask.sum(1).cumsum(0)
    return ptr, mask.nonzero()[:, 1].to(torch.int32).contiguous()


def problem(n, k, m, density, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(m, k, generator=gen) < density
    if 0 < density < 1 and m > 1:
        mask[0] = False  # an empty row
    dense = torch.randn(m, k, generator=gen, dtype=dtype)
    weight = torch.where(mask, dense, torch.full((), float("nan"), dtype=dtype))
    x = torch.randn(n, k, generator=gen, dtype=dtype)
    dy = torch.randn(n, m, generator=gen, dtype=dtype)
    bias = torch.randn(m, generator=gen, dtype=dtype)
    to = dict(device=DEVICE)
    row_ptr, col_idx = compressed(mask)
    col_ptr, row_idx = compressed(mask.T)
    return (mask.to(**to), dense.to(**to), weight.to(**to), x.to(**to), dy.to(**to), bias.to(**to),
            row_ptr.to(**to), col_idx.to(**to), col_ptr.to(**to), row_idx.to(**to))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_forward_and_grads(shape, density, dtype):
    n, k, m = shape
    mask, dense, weight, x, dy, bias, row_ptr, col_idx, col_ptr, row_idx = problem(n, k, m, density, dtype)
    masked = torch.where(mask, dense, torch.zeros((), dtype=dtype, device=DEVICE))
    tol = TOL[dtype]

    y = tk.csr_linear(x, weight, bias, row_ptr, col_idx)
    assert y.shape == (n, m) and y.dtype == dtype
    torch.testing.assert_close(y, x @ masked.T + bias, **tol)
    torch.testing.assert_close(tk.csr_linear(x, weight, None, row_ptr, col_idx), x @ masked.T, **tol)

    dx = tk.csr_linear_grad_input(dy, weight, col_ptr, row_idx)
    assert dx.shape == (n, k)
    torch.testing.assert_close(dx, dy @ masked, **tol)

    dw = tk.csr_linear_grad_weight(dy, x, row_ptr, col_idx)
    assert dw.shape == (m, k)
    torch.testing.assert_close(dw, torch.where(mask, dy.T @ x, 0.0), **tol)
    assert not dw[~mask].any(), "grad_weight must be exactly zero outside the pattern"


def test_references_match_masked_dense():
    mask, dense, weight, x, dy, bias, row_ptr, col_idx, col_ptr, row_idx = problem(5, 9, 4, 0.5, torch.float64)
    masked = torch.where(mask, dense, 0.0)
    torch.testing.assert_close(tk.csr_linear_reference(x, weight, bias, row_ptr, col_idx), x @ masked.T + bias)
    torch.testing.assert_close(tk.csr_linear_grad_input_reference(dy, weight, col_ptr, row_idx), dy @ masked)
    torch.testing.assert_close(tk.csr_linear_grad_weight_reference(dy, x, row_ptr, col_idx),
                               torch.where(mask, dy.T @ x, 0.0))


def test_non_contiguous_input():
    mask, dense, weight, x, dy, bias, row_ptr, col_idx, _, _ = problem(6, 10, 4, 0.5, torch.float64)
    x_t = x.T.contiguous().T  # same values, column-major
    torch.testing.assert_close(tk.csr_linear(x_t, weight, bias, row_ptr, col_idx),
                               tk.csr_linear_reference(x, weight, bias, row_ptr, col_idx))


def test_matches_cpp_op():
    """Same semantics as torch.ops.ebsparse on the CPU, where the compiled extension is present."""
    pytest.importorskip("ebsparse._C")
    mask, dense, weight, x, dy, bias, row_ptr, col_idx, col_ptr, row_idx = problem(9, 11, 7, 0.5, torch.float64)
    cpu = [t.cpu() for t in (weight, x, dy, bias, row_ptr, col_idx, col_ptr, row_idx)]
    w, xc, dyc, b, rp, ci, cp, ri = cpu
    ops = torch.ops.ebsparse
    torch.testing.assert_close(tk.csr_linear(x, weight, bias, row_ptr, col_idx).cpu(), ops.csr_linear(xc, w, b, rp, ci))
    torch.testing.assert_close(tk.csr_linear_grad_input(dy, weight, col_ptr, row_idx).cpu(),
                               ops.csr_linear_grad_input(dyc, w, cp, ri))
    torch.testing.assert_close(tk.csr_linear_grad_weight(dy, x, row_ptr, col_idx).cpu(),
                               ops.csr_linear_grad_weight(dyc, xc, rp, ci))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: tk.csr_linear(p["x"].int(), p["w"], None, p["rp"], p["ci"]), "input: expected float32"),
        (lambda p: tk.csr_linear(p["x"], p["w"].float(), None, p["rp"], p["ci"]), "weight: expected dtype"),
        (lambda p: tk.csr_linear(p["x"], p["w"][:, :-1], None, p["rp"], p["ci"]), r"weight: expected \(M, 8\)"),
        (lambda p: tk.csr_linear(p["x"], p["w"], None, p["rp"].long(), p["ci"]), "row_ptr: expected a 1-D int32"),
        (lambda p: tk.csr_linear(p["x"], p["w"], None, p["rp"][:-1], p["ci"]), "row_ptr: expected 4 entries"),
        (lambda p: tk.csr_linear(p["x"], p["w"], p["b"][:-1], p["rp"], p["ci"]), r"bias: expected \(3,\)"),
        (lambda p: tk.csr_linear_grad_input(p["dy"][:, :-1], p["w"], p["cp"], p["ri"]), r"grad_output: expected \(N, 3\)"),
        (lambda p: tk.csr_linear_grad_input(p["dy"], p["w"], p["cp"], p["ri"].long()), "row_idx: expected a 1-D int32"),
        (lambda p: tk.csr_linear_grad_weight(p["dy"], p["x"][:-1], p["rp"], p["ci"]), r"input: expected \(5, K\)"),
    ],
)
def test_argument_errors_name_the_argument(call, match):
    mask, dense, weight, x, dy, bias, row_ptr, col_idx, col_ptr, row_idx = problem(5, 8, 3, 0.5, torch.float64)
    p = dict(x=x, w=weight, dy=dy, b=bias, rp=row_ptr, ci=col_idx, cp=col_ptr, ri=row_idx)
    with pytest.raises(RuntimeError, match=match):
        call(p)


# ---- 2:4 -------------------------------------------------------------------------------------------

def random_2_4_mask(m, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(m, k // 4, 4, generator=gen).argsort(-1)[..., :2]
    return torch.zeros(m, k // 4, 4, dtype=torch.bool).scatter_(2, keep, True).view(m, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 4), (5, 12), (3, 260), (0, 8)], ids=str)
def test_compress_decompress_2_4(shape, dtype):
    m, k = shape
    mask = random_2_4_mask(m, k).to(DEVICE)
    weight = torch.randn(m, k, dtype=dtype).to(DEVICE)
    values, meta = tk.compress_2_4(weight, mask)
    assert values.shape == (m, k // 2) and values.dtype == dtype
    assert meta.shape == (m, k // 4) and meta.dtype == torch.uint8
    ref_values, ref_meta = tk.compress_2_4_reference(weight, mask)
    assert torch.equal(values, ref_values) and torch.equal(meta, ref_meta)
    first, second = meta & 3, (meta >> 2) & 3
    assert bool((first < second).all())
    expected = torch.where(mask, weight, torch.zeros((), dtype=dtype, device=DEVICE))
    assert torch.equal(tk.decompress_2_4(values, meta), expected)
    assert torch.equal(tk.decompress_2_4_reference(values, meta), expected)


def test_2_4_all_position_pairs():
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    mask = torch.zeros(len(pairs), 4, dtype=torch.bool)
    for row, (a, b) in enumerate(pairs):
        mask[row, [a, b]] = True
    weight = torch.arange(1.0, 1.0 + mask.numel(), dtype=torch.float64).view_as(mask)
    values, meta = tk.compress_2_4(weight.to(DEVICE), mask.to(DEVICE))
    assert meta.view(-1).tolist() == [a | (b << 2) for a, b in pairs]
    assert values.cpu().tolist() == [[weight[r, a].item(), weight[r, b].item()] for r, (a, b) in enumerate(pairs)]


def test_2_4_errors_name_the_argument():
    weight = torch.randn(2, 8, device=DEVICE)
    mask = random_2_4_mask(2, 8).to(DEVICE)
    bad = mask.clone()
    bad[1, 4:8] = True
    with pytest.raises(RuntimeError, match=r"mask: expected exactly 2 kept .* group 3 \(row 1\) keeps 4"):
        tk.compress_2_4(weight, bad)
    with pytest.raises(RuntimeError, match="mask: expected a bool tensor"):
        tk.compress_2_4(weight, mask.float())
    with pytest.raises(RuntimeError, match=r"weight: K \(6\) must be a multiple of 4"):
        tk.compress_2_4(weight[:, :6], mask[:, :6])
    values, meta = tk.compress_2_4(weight, mask)
    broken = meta.clone()
    broken[0, 1] = 0b0111  # positions 3 then 1: not increasing
    with pytest.raises(RuntimeError, match=r"meta: entry 1 \(7\) is not a valid 2:4 code"):
        tk.decompress_2_4(values, broken)
    with pytest.raises(RuntimeError, match="meta: expected a uint8 tensor"):
        tk.decompress_2_4(values, meta[:, :1])


def test_unavailable_reasons():
    assert tk.unavailable_reasons(DEVICE) == []
    reasons = tk.unavailable_reasons("meta")
    assert reasons and "meta" in reasons[0]


HALF_EPS = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


@pytest.mark.parametrize("dtype", list(HALF_EPS), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_half_dtypes_accumulate_in_float32(shape, dtype):
    n, k, m = shape
    mask, dense, weight, x, dy, bias, row_ptr, col_idx, col_ptr, row_idx = problem(n, k, m, 0.4, dtype)
    masked = torch.where(mask, dense, torch.zeros((), dtype=dtype, device=DEVICE)).float()
    eps = HALF_EPS[dtype]

    def close(actual, expected, fan):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.float(), expected, rtol=4 * eps, atol=4 * eps * max(1.0, fan ** 0.5))

    close(tk.csr_linear(x, weight, bias, row_ptr, col_idx), x.float() @ masked.T + bias.float(), k)
    close(tk.csr_linear_grad_input(dy, weight, col_ptr, row_idx), dy.float() @ masked, m)
    dw = tk.csr_linear_grad_weight(dy, x, row_ptr, col_idx)
    close(dw, torch.where(mask, dy.float().T @ x.float(), 0.0), n)
    assert not dw[~mask].any()


def test_malformed_patterns_are_refused_before_any_launch():
    """On a GPU an out-of-range index would be an illegal address that ends the CUDA context: the
    values are checked on the host first (once per pattern)."""
    mask, dense, weight, x, dy, bias, row_ptr, col_idx, col_ptr, row_idx = problem(4, 8, 3, 1.0, torch.float32)
    bad_idx = col_idx.clone()
    bad_idx[5] = 8  # out of range
    with pytest.raises(RuntimeError, match=r"col_idx: expected values in \[0, 8\), got 8 at position 5"):
        tk.csr_linear(x, weight, None, row_ptr, bad_idx)
    unsorted = col_idx.clone()
    unsorted[1], unsorted[2] = col_idx[2], col_idx[1]
    with pytest.raises(RuntimeError, match="col_idx: expected strictly increasing"):
        tk.csr_linear_grad_weight(dy, x, row_ptr, unsorted)
    bad_ptr = row_ptr.clone()
    bad_ptr[1], bad_ptr[2] = row_ptr[2], row_ptr[1]
    with pytest.raises(RuntimeError, match="row_ptr: expected non-decreasing"):
        tk.csr_linear(x, weight, None, bad_ptr, col_idx)
    short = col_ptr.clone()
    short[-1] -= 1
    with pytest.raises(RuntimeError, match="col_ptr: expected to start at 0 and end at row_idx.numel()"):
        tk.csr_linear_grad_input(dy, weight, short, row_idx)
    tk.csr_linear(x, weight, None, row_ptr, col_idx)  # the well-formed pattern still runs
