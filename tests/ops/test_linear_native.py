"""The native CPU linear kernels called directly: the fused backward (both gradients from one pass
over grad_output) on batches large enough to take the per-thread path, and the cached per-pattern
plans (never stale when the pattern tensors change or die)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.formats import build_index
from ebsparse.backends.extension import extension_error

pytestmark = pytest.mark.skipif(extension_error() is not None, reason="ebsparse._C not built")

ops = torch.ops.ebsparse if extension_error() is None else None


def _reference(x, w, b, dy, mask):
    wm = w * mask
    y = x @ wm.t() + (b if b is not None else 0)
    return y, dy @ wm, (dy.t() @ x) * mask


def _tol(dtype, k):
    return dict(atol=1e-4 * k, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10 * k, rtol=1e-10)


def check_case(n, k, m, density, dtype, threads, seed):
    """Every linear op (both gradients together and alone, with and without the bias gradient,
    grad-input from the CSC, grad-weight alone) against the reference on one random problem."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(n, k, generator=g, dtype=dtype), torch.randn(m, k, generator=g, dtype=dtype)
    b, dy = torch.randn(m, generator=g, dtype=dtype), torch.randn(n, m, generator=g, dtype=dtype)
    mask = torch.rand(m, k, generator=g) < density
    rp, ci, cp, ri = build_index(mask).tensors()
    y_ref, dx_ref, dw_ref = _reference(x, w, b, dy, mask)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = ops.csr_linear(x, w, b, rp, ci)
        dx, dw, db = ops.csr_linear_backward(dy, x, w, rp, ci, True, True, True)
        dx_only, none_w, none_b = ops.csr_linear_backward(dy, x, w, rp, ci, True, False)
        none_x, dw_only, db_only = ops.csr_linear_backward(dy, x, w, rp, ci, False, True, True)
        dx_csc = ops.csr_linear_grad_input(dy, w, cp, ri)
        dw_alone = ops.csr_linear_grad_weight(dy, x, rp, ci)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(y, y_ref, **_tol(dtype, k))
    for got in (dx, dx_only, dx_csc):
        torch.testing.assert_close(got, dx_ref, **_tol(dtype, m))
    for got in (dw, dw_only, dw_alone):
        torch.testing.assert_close(got, dw_ref, **_tol(dtype, n))
        assert not got[~mask].any()
    for got in (db, db_only):  # the bias gradient, from the backward's panels or from dy in memory
        torch.testing.assert_close(got, dy.sum(0), **_tol(dtype, n))
    assert none_w.numel() == 0 and none_x.numel() == 0 and none_b.numel() == 0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(300, 700), k=st.integers(1, 300), m=st.integers(1, 300),
       density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]), dtype=st.sampled_from([torch.float32, torch.float64]),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_fused_backward_matches_reference(n, k, m, density, dtype, threads, seed):
    check_case(n, k, m, density, dtype, threads, seed)


# (batch, in, out, density, threads): per-thread chunks (one and two threads, a ragged last chunk),
# the small-batch path, and batches of at most 32 rows (the 32-row panels of the AVX2 set on any
# machine), with empty, sparse, half and full patterns.
KERNEL_CASES = [(1024, 96, 80, 0.1, 2), (777, 53, 131, 0.5, 1), (900, 130, 67, 0.05, 2),
                (640, 40, 48, 1.0, 2), (520, 33, 17, 0.0, 1), (70, 64, 64, 0.3, 2),
                (32, 384, 230, 0.09, 2), (17, 53, 131, 0.5, 1), (1, 40, 48, 1.0, 2), (33, 64, 64, 0.3, 2)]


def check_kernels_against_reference(cases=KERNEL_CASES):
    """check_case in fp32 on each of `cases`."""
    for n, k, m, density, threads in cases:
        check_case(n, k, m, density, torch.float32, threads, seed=n + k + m)


def test_kernels_match_reference():
    check_kernels_against_reference()


def test_avx2_kernels_match_reference():
    """The same through the AVX2 kernels (8-lane panels, the backward's two kernels run one after
    the other instead of fused), in a fresh process: the instruction set is chosen once per process."""
    from tests.ops.helpers import run_with_capability  # (this file also runs standalone: no top-level import)

    run_with_capability(__file__, "m.check_kernels_against_reference()")


def test_fused_backward_non_contiguous_arguments():
    x = torch.randn(600, 40).t().contiguous().t()  # column-major view
    w = torch.randn(30, 80)[:, ::2]
    dy = torch.randn(30, 600).t()
    mask = torch.rand(30, 40) < 0.3
    rp, ci, _, _ = build_index(mask).tensors()
    _, dx_ref, dw_ref = _reference(x, w, None, dy, mask)
    dx, dw, _ = ops.csr_linear_backward(dy, x, w, rp, ci, True, True)
    torch.testing.assert_close(dx, dx_ref, **_tol(torch.float32, 30))
    torch.testing.assert_close(dw, dw_ref, **_tol(torch.float32, 600))


def _strided(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of t (or of a broadcast of them) in a layout the kernels read in place."""
    n, c = t.shape
    if layout == "expanded":  # what y.sum() hands back: one value, strides (0, 0)
        return t[:1, :1].expand(n, c)
    if layout == "row-broadcast":  # one value per row, strides (1, 0)
        return t[:, :1].expand(n, c)
    if layout == "row-slice":  # rows of a wider tensor, strides (c + 3, 1)
        wide = torch.zeros(n, c + 3, dtype=t.dtype)
        wide[:, 1:c + 1] = t
        return wide[:, 1:c + 1]
    return t


@settings(max_examples=25, deadline=None)
@given(n=st.sampled_from([1, 70, 300, 651]), k=st.integers(1, 90), m=st.integers(1, 90),
       dy_layout=st.sampled_from(["expanded", "row-broadcast", "row-slice", "dense"]),
       x_layout=st.sampled_from(["expanded", "row-slice", "dense"]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_strided_arguments_read_in_place(n, k, m, dy_layout, x_layout, dtype, seed):
    """Expanded gradients and row-strided activations (read without a copy) give the values of
    their dense copies, on the small-batch and the per-thread paths."""
    g = torch.Generator().manual_seed(seed)
    x = _strided(torch.randn(n, k, generator=g, dtype=dtype), x_layout)
    dy = _strided(torch.randn(n, m, generator=g, dtype=dtype), dy_layout)
    w = torch.randn(m, k, generator=g, dtype=dtype)
    mask = torch.rand(m, k, generator=g) < 0.3
    rp, ci, cp, ri = build_index(mask).tensors()
    y_ref, dx_ref, dw_ref = _reference(x.contiguous(), w, None, dy.contiguous(), mask)
    torch.testing.assert_close(ops.csr_linear(x, w, None, rp, ci), y_ref, **_tol(dtype, k))
    dx, dw, _ = ops.csr_linear_backward(dy, x, w, rp, ci, True, True)
    torch.testing.assert_close(dx, dx_ref, **_tol(dtype, m))
    torch.testing.assert_close(dw, dw_ref, **_tol(dtype, n))
    torch.testing.assert_close(ops.csr_linear_grad_input(dy, w, cp, ri), dx_ref, **_tol(dtype, m))
    torch.testing.assert_close(ops.csr_linear_grad_weight(dy, x, rp, ci), dw_ref, **_tol(dtype, n))


@pytest.mark.parametrize("change", ["none", "in-place", "other-tensor", "no-forward"])
def test_backward_reuses_forward_values_only_for_the_same_weight(change):
    """The backward reads the values its forward gathered only while the weight is that same tensor,
    unmodified; a weight changed in place or another tensor with the same pattern is read afresh."""
    g = torch.Generator().manual_seed(3)
    x, w, dy = torch.randn(600, 50, generator=g), torch.randn(40, 50, generator=g), torch.randn(600, 40, generator=g)
    mask = torch.rand(40, 50, generator=g) < 0.3
    rp, ci, _, _ = build_index(mask).tensors()
    if change != "no-forward":
        ops.csr_linear(x, w, None, rp, ci)
    if change == "in-place":
        w.mul_(-2.0).add_(1.0)
    elif change == "other-tensor":
        w = torch.randn(40, 50, generator=g)
    _, dx_ref, dw_ref = _reference(x, w, None, dy, mask)
    dx, dw, _ = ops.csr_linear_backward(dy, x, w, rp, ci, True, True)
    torch.testing.assert_close(dx, dx_ref, **_tol(torch.float32, 40))
    torch.testing.assert_close(dw, dw_ref, **_tol(torch.float32, 600))


def test_plan_follows_in_place_pattern_changes():
    """The plan cache is keyed by the index tensors and their version counters: editing the pattern
    in place (same tensors, new contents) must not reuse the old plan."""
    x, w = torch.randn(520, 64, dtype=torch.float64), torch.randn(48, 64, dtype=torch.float64)
    # Editing col_idx in place needs the same kept count per row: both masks keep 13 per row.
    first = torch.zeros(48, 64, dtype=torch.bool)
    second = torch.zeros(48, 64, dtype=torch.bool)
    for r in range(48):
        first[r, torch.randperm(64)[:13]] = True
        second[r, torch.randperm(64)[:13]] = True
    rp, ci, _, _ = build_index(first).tensors()
    torch.testing.assert_close(ops.csr_linear(x, w, None, rp, ci), x @ (w * first).t())
    ci.copy_(build_index(second).col_idx)  # bumps ci's version counter
    torch.testing.assert_close(ops.csr_linear(x, w, None, rp, ci), x @ (w * second).t())
    dy = torch.randn(520, 48, dtype=torch.float64)
    dx, dw, _ = ops.csr_linear_backward(dy, x, w, rp, ci, True, True)
    torch.testing.assert_close(dx, dy @ (w * second))
    torch.testing.assert_close(dw, (dy.t() @ x) * second)


def test_plans_of_many_patterns_do_not_mix():
    """More live patterns than the cache holds, each used twice in turn: every result matches its
    own pattern (entries evicted and rebuilt, none confused with another)."""
    x, w = torch.randn(8, 16), torch.randn(12, 16)
    masks = [torch.rand(12, 16) < 0.5 for _ in range(300)]
    indices = [build_index(mask).tensors() for mask in masks]
    for _ in range(2):
        for mask, (rp, ci, _, _) in zip(masks, indices):
            torch.testing.assert_close(ops.csr_linear(x, w, None, rp, ci), x @ (w * mask).t(),
                                       atol=1e-5, rtol=1e-5)
