"""The native CPU conv kernels called directly: the cached packing of a pattern must follow the
pattern's tensors (never stale when they are edited in place or when the geometry changes); the
copy builders for small maps and strided geometries; the (row, column) phases of a strided
grad-input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.formats import build_index
from ebsparse.backends.extension import extension_error

pytestmark = pytest.mark.skipif(extension_error() is not None, reason="ebsparse._C not built")

ONE = [1, 1]


def _reference(x, w, dy, mask, padding):
    wm = (w * mask).requires_grad_()
    x = x.clone().requires_grad_()
    y = torch.nn.functional.conv2d(x, wm, None, 1, padding)
    y.backward(dy)
    return y.detach(), x.grad, wm.grad * mask


def _per_row_mask(co, ci, kh, kw, kept, seed):
    """Every output channel keeps exactly `kept` taps, so two such masks have equal row pointers."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(co, ci * kh * kw, dtype=torch.bool)
    for r in range(co):
        mask[r, torch.randperm(ci * kh * kw, generator=g)[:kept]] = True
    return mask.view(co, ci, kh, kw)


def test_packing_follows_in_place_pattern_changes():
    x, w = torch.randn(2, 8, 9, 9), torch.randn(6, 8, 3, 3)
    first, second = _per_row_mask(6, 8, 3, 3, 20, 0), _per_row_mask(6, 8, 3, 3, 20, 1)
    index = build_index(first)
    rp, ci = index.row_ptr, index.col_idx
    y, _, _ = _reference(x, w, torch.zeros(2, 6, 9, 9), first, 1)
    torch.testing.assert_close(torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, ONE, ONE, ONE), y)
    ci.copy_(build_index(second).col_idx)  # same tensors, new pattern: bumps the version counter
    dy = torch.randn(2, 6, 9, 9)
    y, _, dw = _reference(x, w, dy, second, 1)
    torch.testing.assert_close(torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, ONE, ONE, ONE), y)
    got_dw = torch.ops.ebsparse.csr_conv2d_grad_weight(dy, x, rp, ci, list(w.shape), ONE, ONE, ONE)
    torch.testing.assert_close(got_dw, dw, atol=1e-4, rtol=1e-4)


def test_one_pattern_on_several_geometries():
    """The same pattern tensors on inputs of other sizes and paddings: the packing depends on the
    tiling, so each geometry must get its own (results match the reference every time)."""
    w = torch.randn(5, 4, 3, 3)
    mask = torch.rand(5, 4, 3, 3) < 0.4
    index = build_index(mask)
    for _ in range(2):
        for size, padding in [(7, 1), (16, 0), (5, 2), (33, 1)]:
            x = torch.randn(2, 4, size, size)
            ref = torch.nn.functional.conv2d(x, w * mask, None, 1, padding)
            out = torch.ops.ebsparse.csr_conv2d(x, w, None, index.row_ptr, index.col_idx, ONE, [padding] * 2, ONE)
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
            dy = torch.randn_like(ref)
            dx = torch.ops.ebsparse.csr_conv2d_grad_input(dy, w, index.col_ptr, index.row_idx, list(x.shape),
                                                          ONE, [padding] * 2, ONE)
            ref_dx = torch.nn.grad.conv2d_input(x.shape, w * mask, dy, 1, padding)
            torch.testing.assert_close(dx, ref_dx, atol=1e-4, rtol=1e-4)


# Maps narrower than half a vector put several images side by side in one vector row (conv/engine.h):
# batch sizes that leave a partial last group, strides (grad-input then runs one engine per phase),
# enough channels for several channel blocks (partial sums between blocks), 1x1 and 3x3.
SMALL_MAPS = [
    # n, ci, co, h, w, k, stride, padding, density, dilation
    (5, 16, 12, 4, 4, 3, 1, 1, 0.3, 1),
    (3, 8, 6, 8, 8, 3, 1, 1, 0.5, 1),
    (8, 256, 32, 4, 4, 3, 1, 1, 0.05, 1),
    (7, 12, 10, 5, 5, 3, 1, 1, 0.4, 1),
    (4, 6, 5, 7, 6, 3, 2, 1, 0.6, 1),
    (6, 10, 8, 3, 3, 1, 1, 0, 0.5, 1),
    (9, 4, 4, 1, 1, 1, 1, 0, 1.0, 1),
]

# Strided convolutions on maps wide enough for one image per vector row, whose copies gather their
# columns (fill_copy_gathered): forward and grad-weight read every stride-th column, grad-input runs
# an engine per (row, column) phase and interleaves the column phases. Odd sizes leave ragged last
# vectors; dilation and padding past the kernel's reach move the gathered columns; several channel
# blocks.
STRIDED_MAPS = [
    (2, 5, 7, 23, 21, 3, 2, 1, 0.5, 1),
    (3, 8, 6, 40, 37, 3, 2, 2, 0.3, 2),
    (2, 96, 16, 20, 20, 3, 3, 1, 0.1, 1),
    (2, 4, 4, 19, 33, 1, 2, 0, 1.0, 1),
]


def check_against_reference(cases):
    torch.manual_seed(0)
    for n, ci, co, h, w, k, stride, padding, density, dilation in cases:
        x, wt = torch.randn(n, ci, h, w), torch.randn(co, ci, k, k)
        mask = torch.rand(co, ci, k, k) < density
        index = build_index(mask)
        geo = ([stride] * 2, [padding] * 2, [dilation] * 2)
        wm = (wt * mask).requires_grad_()
        xr = x.clone().requires_grad_()
        y = torch.nn.functional.conv2d(xr, wm, None, stride, padding, dilation)
        dy = torch.randn_like(y)
        y.backward(dy)
        ops = torch.ops.ebsparse
        torch.testing.assert_close(ops.csr_conv2d(x, wt, None, index.row_ptr, index.col_idx, *geo), y.detach(),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ops.csr_conv2d_grad_input(dy, wt, index.col_ptr, index.row_idx, list(x.shape),
                                                             *geo), xr.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ops.csr_conv2d_grad_weight(dy, x, index.row_ptr, index.col_idx, list(wt.shape),
                                                              *geo), wm.grad * mask, atol=1e-4, rtol=1e-4)
        dw, db = ops.csr_conv2d_grad_weight_bias(dy, x, index.row_ptr, index.col_idx, list(wt.shape), *geo)
        torch.testing.assert_close(dw, wm.grad * mask, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(db, dy.sum((0, 2, 3)), atol=1e-4, rtol=1e-4)


def run_with_avx2_kernels(cases_name):
    """check_against_reference(<cases_name>) through the AVX2 kernels (8-lane vectors: other group
    sizes, AVX2 gathers), in a fresh process since the instruction set is chosen once per process."""
    from tests.ops.helpers import run_with_capability  # (this file also runs standalone: no top-level import)

    run_with_capability(__file__, f"m.check_against_reference(m.{cases_name})")


def test_images_share_vectors_on_small_maps():
    check_against_reference(SMALL_MAPS)


def test_images_share_vectors_on_small_maps_avx2():
    run_with_avx2_kernels("SMALL_MAPS")


def test_strided_copies_gather_their_columns():
    check_against_reference(STRIDED_MAPS)


def test_strided_copies_gather_their_columns_avx2():
    run_with_avx2_kernels("STRIDED_MAPS")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), ci=st.integers(1, 9), co=st.sampled_from([1, 5, 70]), h=st.integers(1, 20),
       w=st.integers(1, 20), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 4), sw=st.integers(1, 4),
       ph=st.integers(0, 3), pw=st.integers(0, 3), dh=st.integers(1, 3), dw=st.integers(1, 3),
       density=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_strided_grad_input_by_phase(n, ci, co, h, w, kh, kw, sh, sw, ph, pw, dh, dw, density, seed):
    """Grad-input of a strided conv runs one stride-1 engine per (row, column) phase of the input over
    grad_output itself, with only that phase's taps: rectangular strides, odd sizes (phases of unequal
    width, interleaved into dx), phases without a single tap (density 0, kernels shorter than the
    stride), dilations whose phases step through the kernel (a phase's taps at dilation d / gcd(s, d)),
    several channel blocks."""
    if h + 2 * ph - dh * (kh - 1) < 1 or w + 2 * pw - dw * (kw - 1) < 1:
        return
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(n, ci, h, w, generator=g), torch.randn(co, ci, kh, kw, generator=g)
    mask = torch.rand(co, ci, kh, kw, generator=g) < density
    index = build_index(mask)
    y = torch.nn.functional.conv2d(x, wt * mask, None, (sh, sw), (ph, pw), (dh, dw))
    dy = torch.randn(y.shape, generator=g)
    expected = torch.nn.grad.conv2d_input(x.shape, wt * mask, dy, (sh, sw), (ph, pw), (dh, dw))
    got = torch.ops.ebsparse.csr_conv2d_grad_input(dy, wt, index.col_ptr, index.row_idx, list(x.shape), [sh, sw],
                                                   [ph, pw], [dh, dw])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _grad_layout(dy: torch.Tensor, layout: str) -> torch.Tensor:
    """dy's values (or a broadcast of them) in a layout a backward can receive."""
    n, c, h, w = dy.shape
    if layout == "expanded":  # what y.sum() hands back: one value, all strides 0
        return dy[:1, :1, :1, :1].expand(n, c, h, w)
    if layout == "plane-repeated":  # one plane over images and channels (what ops.conv makes of the above)
        return dy[:1, :1].expand(n, c, h, w)
    if layout == "batch-expanded":
        return dy[:1].expand(n, c, h, w)
    if layout == "channel-slice":  # planes contiguous, channels of a wider tensor
        wide = torch.zeros(n, c + 2, h, w)
        wide[:, 1:c + 1] = dy
        return wide[:, 1:c + 1]
    if layout == "transposed-planes":  # planes not contiguous: copied
        return dy.transpose(2, 3).contiguous().transpose(2, 3)
    return dy


@settings(max_examples=40, deadline=None)
@given(layout=st.sampled_from(["expanded", "plane-repeated", "batch-expanded", "channel-slice",
                               "transposed-planes", "dense"]),
       n=st.integers(1, 3), ci=st.integers(1, 9), co=st.integers(1, 20), h=st.integers(1, 12),
       w=st.integers(1, 12), k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
       density=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_grad_output_strides_read_in_place(layout, n, ci, co, h, w, k, stride, padding, density, seed):
    """grad_output whose (H, W) planes are contiguous is read at its own image and channel strides
    (an expanded one through a single repeated plane); the gradients are those of its dense copy.
    Small maps cover the images-side-by-side copies, stride 2 the gathered ones."""
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(n, ci, h, w, generator=g), torch.randn(co, ci, k, k, generator=g)
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    mask = torch.rand(co, ci, k, k, generator=g) < density
    index = build_index(mask)
    geo = ([stride] * 2, [padding] * 2, ONE)
    wm = (wt * mask).requires_grad_()
    xr = x.clone().requires_grad_()
    y = torch.nn.functional.conv2d(xr, wm, None, stride, padding)
    dy = _grad_layout(torch.randn(y.shape, generator=g), layout)
    y.backward(dy.contiguous())
    ops = torch.ops.ebsparse
    dx = ops.csr_conv2d_grad_input(dy, wt, index.col_ptr, index.row_idx, list(x.shape), *geo)
    dw = ops.csr_conv2d_grad_weight(dy, x, index.row_ptr, index.col_idx, list(wt.shape), *geo)
    torch.testing.assert_close(dx, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dw, wm.grad * mask, atol=1e-4, rtol=1e-4)
    dw, db = ops.csr_conv2d_grad_weight_bias(dy, x, index.row_ptr, index.col_idx, list(wt.shape), *geo)
    torch.testing.assert_close(dw, wm.grad * mask, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(db, dy.contiguous().sum((0, 2, 3)), atol=1e-4, rtol=1e-4)


def test_sum_loss_through_the_module_matches_dense():
    """The autograd path hands the kernels `y.sum()`'s expanded gradient as one repeated plane."""
    import ebsparse

    g = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(8, 12, 3, padding=1)
    mask = torch.rand(12, 8, 3, 3, generator=g) < 0.4
    x = torch.randn(3, 8, 7, 7, generator=g, requires_grad=True)
    layer = ebsparse.SparseConv2d.from_dense(conv, mask=mask, backend="native")
    layer(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = (conv.weight.detach() * mask).requires_grad_()
    b_ref = conv.bias.detach().clone().requires_grad_()
    torch.nn.functional.conv2d(x_ref, w_ref, b_ref, 1, 1).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.weight.grad * mask, w_ref.grad * mask, atol=1e-4, rtol=1e-4)
    assert not layer.weight.grad[~mask].any()
    torch.testing.assert_close(layer.bias.grad, b_ref.grad, atol=1e-4, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 9), ci=st.integers(1, 40), co=st.sampled_from([1, 5, 33]), h=st.integers(1, 36),
       w=st.integers(1, 36), k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
       density=st.sampled_from([0.0, 0.05, 0.4, 1.0]), threads=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**16))
def test_bias_gradient_from_the_grad_weight_pass(n, ci, co, h, w, k, stride, padding, density, threads, seed):
    """csr_conv2d_grad_weight_bias: the grad-weight's tasks also sum grad_output per output channel
    (rows of one image, or of images side by side on maps narrower than half a vector); every task
    counts each element once, whatever the tiling, batch (empty too), threads or pattern (empty:
    no task runs and the sum is taken directly)."""
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(n, ci, h, w, generator=g), torch.randn(co, ci, k, k, generator=g)
    mask = torch.rand(co, ci, k, k, generator=g) < density
    index = build_index(mask)
    geo = ([stride] * 2, [padding] * 2, ONE)
    y = torch.nn.functional.conv2d(x, wt * mask, None, stride, padding)
    dy = torch.randn(y.shape, generator=g)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dw, db = torch.ops.ebsparse.csr_conv2d_grad_weight_bias(dy, x, index.row_ptr, index.col_idx,
                                                                list(wt.shape), *geo)
    finally:
        torch.set_num_threads(previous)
    assert db.shape == (co,) and db.dtype == dy.dtype
    # float64 references; every entry sums n * Ho * Wo float32 products (up to ~10^4 here)
    tol = dict(atol=1e-5 * max(1, n * y.shape[2] * y.shape[3]) ** 0.5, rtol=1e-5)
    torch.testing.assert_close(db.double(), dy.double().sum((0, 2, 3)), **tol)
    ref = torch.nn.grad.conv2d_weight(x.double(), wt.shape, dy.double(), stride, padding) * mask if n else 0 * wt
    torch.testing.assert_close(dw.double(), ref.double(), **tol)


def test_module_bias_gradient_comes_from_the_fused_pass(monkeypatch):
    """A SparseConv2d with a trainable bias on the native backend takes its bias gradient from the
    grad-weight op (no separate sum over grad_output); a frozen bias or no bias uses the plain op."""
    import ebsparse

    calls = []
    ops = torch.ops.ebsparse
    for name in ("csr_conv2d_grad_weight", "csr_conv2d_grad_weight_bias"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _op=op, _name=name: calls.append(_name) or _op(*a))
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(6, 10, 3, padding=1)
    mask = torch.rand(10, 6, 3, 3, generator=g) < 0.3
    layer = ebsparse.SparseConv2d.from_dense(conv, mask=mask, backend="native")
    x = torch.randn(4, 6, 9, 9, generator=g)
    dy = torch.randn(4, 10, 9, 9, generator=g)
    layer(x).backward(dy)
    assert calls == ["csr_conv2d_grad_weight_bias"]
    torch.testing.assert_close(layer.bias.grad, dy.sum((0, 2, 3)), atol=1e-4, rtol=1e-4)
    calls.clear()
    layer.bias.requires_grad_(False)
    layer.weight.grad = None
    layer(x).backward(dy)
    assert calls == ["csr_conv2d_grad_weight"] and layer.bias.grad is not None  # the earlier one, untouched


def test_channel_slice_gradient_reaches_the_kernels_uncopied(monkeypatch):
    """The gradient of a layer whose output is concatenated with another tensor is a channel slice
    of the concatenation's gradient: the native backward hands it to both kernels as it is (their
    float32 engines read (H, W) planes at any image and channel stride), and the gradients are
    those of the dense layer."""
    import ebsparse

    seen = []
    ops = torch.ops.ebsparse
    for name in ("csr_conv2d_grad_input", "csr_conv2d_grad_weight_bias"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda dy, *a, _op=op: seen.append(dy.is_contiguous()) or _op(dy, *a))
    g = torch.Generator().manual_seed(7)
    conv = torch.nn.Conv2d(6, 10, 3, padding=1)
    mask = torch.rand(10, 6, 3, 3, generator=g) < 0.3
    layer = ebsparse.SparseConv2d.from_dense(conv, mask=mask, backend="native")
    x = torch.randn(3, 6, 8, 8, generator=g, requires_grad=True)
    skip = torch.randn(3, 5, 8, 8, generator=g)
    dz = torch.randn(3, 15, 8, 8, generator=g)
    torch.cat([layer(x), skip], 1).backward(dz)
    assert seen == [False, False]
    x_ref = x.detach().clone().requires_grad_()
    w_ref = (conv.weight.detach() * mask).requires_grad_()
    b_ref = conv.bias.detach().clone().requires_grad_()
    torch.cat([torch.nn.functional.conv2d(x_ref, w_ref, b_ref, 1, 1), skip], 1).backward(dz)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad * mask, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad, atol=1e-4, rtol=1e-4)


def _column_mask(co, ci, kh, kw, generator):
    """Each (o, c, kw) kernel column keeps a random subset of its rows, every subset as likely (dense
    and empty columns, adjacent pairs, pairs one row apart, runs longer than three)."""
    subsets = torch.randint(0, 2**kh, (co, ci, kw), generator=generator)
    rows = torch.arange(kh).view(1, 1, kh, 1)
    return (subsets.unsqueeze(2) >> rows) & 1 == 1


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 2), ci=st.integers(1, 40), co=st.sampled_from([1, 3, 17]), h=st.integers(1, 40),
       w=st.integers(1, 40), kh=st.integers(2, 6), kw=st.integers(1, 3), padding=st.integers(0, 3),
       dilation=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_tap_groups_match_reference(n, ci, co, h, w, kh, kw, padding, dilation, seed):
    """The kernels load the rows that the kept taps kh, kh + 1 (and kh + 2) of one kernel column
    share once for all of them (tap groups, conv/engine.h): every kind of group, columns longer than
    three, a one-row output (tiles of height 1, where one column's last row touches the next
    column's first), several channel blocks; dilation 2 takes the ungrouped path."""
    if h + 2 * padding - dilation * (kh - 1) < 1 or w + 2 * padding - dilation * (kw - 1) < 1:
        return
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(n, ci, h, w, generator=g), torch.randn(co, ci, kh, kw, generator=g)
    mask = _column_mask(co, ci, kh, kw, g)
    index = build_index(mask)
    geo = (ONE, [padding] * 2, [dilation] * 2)
    y = torch.nn.functional.conv2d(x, wt * mask, None, 1, padding, dilation)
    dy = torch.randn(y.shape, generator=g)
    ops = torch.ops.ebsparse
    torch.testing.assert_close(ops.csr_conv2d(x, wt, None, index.row_ptr, index.col_idx, *geo), y,
                               atol=1e-4, rtol=1e-4)
    expected_dx = torch.nn.grad.conv2d_input(x.shape, wt * mask, dy, 1, padding, dilation)
    torch.testing.assert_close(ops.csr_conv2d_grad_input(dy, wt, index.col_ptr, index.row_idx, list(x.shape), *geo),
                               expected_dx, atol=1e-4, rtol=1e-4)
    expected_dw = torch.nn.grad.conv2d_weight(x, wt.shape, dy, 1, padding, dilation) * mask
    torch.testing.assert_close(ops.csr_conv2d_grad_weight(dy, x, index.row_ptr, index.col_idx, list(wt.shape), *geo),
                               expected_dw, atol=1e-4, rtol=1e-4)



@pytest.mark.parametrize("threads", [1, 2, 3])
def test_grad_weight_of_a_large_layer_is_filled_by_row_blocks(threads):
    """A weight gradient larger than one fill chunk (64K floats) is zeroed and filled by blocks of
    output rows, split between the threads: every kept tap matches the reference, every other
    entry is exactly zero, also where the previous call's gradient held values (the allocator
    hands back the same memory)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, dy = torch.randn(2, 96, 6, 6), torch.randn(2, 70, 6, 6)
        w = torch.randn(70, 96, 3, 3)  # 70 rows of 864 floats: 60K floats; two layers' worth below
        for density in (1.0, 0.05):
            mask = torch.rand(70, 96, 3, 3) < density
            rp, ci = build_index(mask).tensors()[:2]
            _, _, dw = _reference(x, w, dy, mask, 1)
            got = torch.ops.ebsparse.csr_conv2d_grad_weight(dy, x, rp, ci, list(w.shape), ONE, ONE, ONE)
            torch.testing.assert_close(got, dw, atol=1e-4, rtol=1e-4)
            assert not got[~mask].any()
        wide = torch.randn(150, 96, 3, 3)  # 130K floats: more than two chunks
        mask = torch.rand(150, 96, 3, 3) < 0.1
        rp, ci = build_index(mask).tensors()[:2]
        dy = torch.randn(2, 150, 6, 6)
        _, _, dw = _reference(x, wide, dy, mask, 1)
        got = torch.ops.ebsparse.csr_conv2d_grad_weight(dy, x, rp, ci, list(wide.shape), ONE, ONE, ONE)
        torch.testing.assert_close(got, dw, atol=1e-4, rtol=1e-4)
        assert not got[~mask].any()
    finally:
        torch.set_num_threads(previous)

def _cache_stats():
    held, built = torch.ops.ebsparse.cpu_pattern_cache_stats()
    return held, built


def test_packs_of_more_layers_than_a_global_lru_held_are_all_kept():
    """A model cycling through ~300 patterns (three packs per layer and step, as a U-Net's ~90 sparse
    convs do) builds each pack once: the second cycle builds nothing (a global LRU of 256 missed on
    every call of such a cycle and rebuilt every pack)."""
    x, dy = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    indices = [build_index(torch.rand(4, 4, 3, 3) < 0.5) for _ in range(100)]
    w = torch.randn(4, 4, 3, 3)

    def cycle():
        for index in indices:
            rp, ci, cp, ri = index.tensors()
            torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, ONE, ONE, ONE)
            torch.ops.ebsparse.csr_conv2d_grad_input(dy, w, cp, ri, list(x.shape), ONE, ONE, ONE)
            torch.ops.ebsparse.csr_conv2d_grad_weight(dy, x, rp, ci, list(w.shape), ONE, ONE, ONE)

    cycle()
    _, built = _cache_stats()
    cycle()
    assert _cache_stats()[1] == built


def test_packs_of_dead_patterns_are_purged():
    """Entries whose index tensors died are removed (at the next build), not kept until evicted."""
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    first = build_index(torch.rand(4, 4, 3, 3) < 0.5)
    torch.ops.ebsparse.csr_conv2d(x, w, None, first.row_ptr, first.col_idx, ONE, ONE, ONE)  # purges earlier tests'
    held_before, _ = _cache_stats()
    indices = [build_index(torch.rand(4, 4, 3, 3) < 0.5) for _ in range(50)]
    for index in indices:
        torch.ops.ebsparse.csr_conv2d(x, w, None, index.row_ptr, index.col_idx, ONE, ONE, ONE)
    assert _cache_stats()[0] >= held_before + 50
    del indices, index
    fresh = build_index(torch.rand(4, 4, 3, 3) < 0.5)
    torch.ops.ebsparse.csr_conv2d(x, w, None, fresh.row_ptr, fresh.col_idx, ONE, ONE, ONE)
    assert _cache_stats()[0] <= held_before + 2  # the fresh pattern's pack and its values check
