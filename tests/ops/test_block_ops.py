"""`block_sparse_linear` / `block_sparse_conv2d` on every backend that has them, against the pure-PyTorch
reference (a block mask is a mask: `sparse_*_reference`), with proof of which backend ran; gradcheck in
fp64; the AVX2 kernels in a fresh process; dropped weights never read; argument errors."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.formats.block import SUPPORTED_BLOCKS, build_block_index, random_block_mask
from ebsparse.ops import block_sparse_conv2d, block_sparse_linear, sparse_conv2d_reference, sparse_linear_reference
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")
DTYPES = [torch.float32, torch.float64]


def _params(op):
    """(backend, dtype) for the CPU backends with fp32/fp64 kernels; the Triton block kernels (tl.dot:
    fp32/bf16/fp16, slow under the interpreter) have their own small cases in tests/triton."""
    out = []
    for dtype in DTYPES:
        for p in backend_params(op, CPU, dtype):
            if p.values[0] != "triton":
                out.append(pytest.param(p.values[0], dtype, marks=p.marks, id=f"{p.values[0]}-{dtype}"))
    return out


def _tol(dtype, terms):
    eps = 2e-6 if dtype == torch.float32 else 1e-13
    return dict(atol=eps * max(1.0, terms) * 4, rtol=eps * 100)


def _mask(shape, density, block, seed):
    if density in (0.0, 1.0):
        return torch.full(shape, bool(density))
    return random_block_mask(shape, density, block, generator=torch.Generator().manual_seed(seed))


def _check_linear(backend, n, rb, cb, block, density, dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    m, k = rb * block[0], cb * block[1]
    x = torch.randn(n, k, generator=g, dtype=dtype)
    w = torch.randn(m, k, generator=g, dtype=dtype)
    b = torch.randn(m, generator=g, dtype=dtype) if bias else None
    mask = _mask((m, k), density, block, seed)
    w_nan = w.masked_fill(~mask, float("nan"))  # dropped weights must never be read
    xs, ws = x.clone().requires_grad_(), w_nan.clone().requires_grad_()
    with runs_on(backend, "block_linear", phases=("forward", "backward")):
        y = block_sparse_linear(xs, ws, b, mask, block, backend=backend)
        dy = torch.randn(y.shape, generator=g, dtype=dtype)
        y.backward(dy)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y_ref = sparse_linear_reference(xr, wr, b, mask)
    y_ref.backward(dy)
    torch.testing.assert_close(y, y_ref, **_tol(dtype, k))
    torch.testing.assert_close(xs.grad, xr.grad, **_tol(dtype, m))
    torch.testing.assert_close(ws.grad, wr.grad, **_tol(dtype, n))
    assert not ws.grad[~mask].any()


def _check_conv(backend, n, rb, cb, block, size, kernel, stride, padding, dilation, density, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    co, ci = rb * block[0], cb * block[1]
    x = torch.randn(n, ci, *size, generator=g, dtype=dtype)
    w = torch.randn(co, ci, kernel, kernel, generator=g, dtype=dtype)
    b = torch.randn(co, generator=g, dtype=dtype)
    mask = _mask(w.shape, density, block, seed)
    w_nan = w.masked_fill(~mask, float("nan"))
    # the bias gradient: the native backward sums it in the grad-weight's pass over grad_output
    xs, ws, bs = x.clone().requires_grad_(), w_nan.clone().requires_grad_(), b.clone().requires_grad_()
    with runs_on(backend, "block_conv2d", phases=("forward", "backward")):
        y = block_sparse_conv2d(xs, ws, bs, mask, block, stride, padding, dilation, backend=backend)
        dy = torch.randn(y.shape, generator=g, dtype=dtype)
        y.backward(dy)
    xr, wr, br = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    y_ref = sparse_conv2d_reference(xr, wr, br, mask, stride, padding, dilation)
    y_ref.backward(dy)
    terms = ci * kernel * kernel
    torch.testing.assert_close(y, y_ref, **_tol(dtype, terms))
    torch.testing.assert_close(xs.grad, xr.grad, **_tol(dtype, co * kernel * kernel))
    torch.testing.assert_close(ws.grad, wr.grad, **_tol(dtype, n * y.shape[2] * y.shape[3]))
    torch.testing.assert_close(bs.grad, br.grad, **_tol(dtype, n * y.shape[2] * y.shape[3]))
    assert not ws.grad[~mask].any()


@pytest.mark.parametrize("backend,dtype", _params("block_linear"))
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 150), rb=st.integers(1, 4), cb=st.integers(1, 4), block=st.sampled_from(SUPPORTED_BLOCKS),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 9999), bias=st.booleans())
def test_block_linear_matches_reference(backend, dtype, n, rb, cb, block, density, seed, bias):
    _check_linear(backend, n, rb, cb, block, density, dtype, seed, bias)


@pytest.mark.parametrize("backend,dtype", _params("block_conv2d"))
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 3), rb=st.integers(1, 3), cb=st.integers(1, 2), block=st.sampled_from(SUPPORTED_BLOCKS),
       h=st.integers(3, 11), w=st.integers(3, 11), kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from([0, 1, 2]), dilation=st.sampled_from([1, 2]),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 9999))
def test_block_conv2d_matches_reference(backend, dtype, n, rb, cb, block, h, w, kernel, stride, padding, dilation,
                                        density, seed):
    if min(h, w) + 2 * padding < dilation * (kernel - 1) + 1:
        return  # no output
    _check_conv(backend, n, rb, cb, block, (h, w), kernel, stride, padding, dilation, density, dtype, seed)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(120, 420), threads=st.sampled_from([1, 2]), rb=st.integers(1, 3), cb=st.integers(1, 6),
       block=st.sampled_from([(16, 16), (32, 32)]), density=st.sampled_from([0.0, 0.3, 1.0]),
       seed=st.integers(0, 9999))
def test_native_linear_grad_weight_in_passes(n, threads, rb, cb, block, density, seed):
    """The native row-major grad-weight (block widths of 2 or 4 vectors) runs passes of 128 batch rows
    as tasks, each thread summing into its own copy of the block gradients, grad_output copied when
    block rows hold more than 3 kept blocks on average and read in place otherwise: batches of one
    to four passes (the last one partial), on one and two threads, against the reference."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_linear("native", n, rb, cb, block, density, torch.float32, seed, bias=False)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("block", [(16, 16), (32, 32)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_native_linear_large_outputs(threads, block):
    """Outputs of 2 MB and more (1100 x 512 floats, forward and grad-input) leave the row-major
    kernels as streaming stores, with a last task of fewer rows than the others: against the reference
    on one and two threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_linear("native", 1100, 512 // block[0], 512 // block[1], block, 0.3, torch.float32, 5)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(12, 12), (16, 16), (7, 30), (48, 48)], ids=str)
def test_native_conv_tiles_of_several_images(threads, size):
    """Stride-1 convolutions whose images span several column tiles, on several images: the forward's
    tasks take the tiles image-interleaved (tile t of image t mod N), the grad-weight's image by image
    (tiles of up to 2048 columns of one image: a 48x48 map's 2398 padded-grid columns make two);
    every output pixel and weight gradient must come out once, on one and two threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_conv("native", 3, 2, 2, (16, 16), size, 3, 1, 1, 1, 0.5, torch.float32, 3)
    finally:
        torch.set_num_threads(previous)


@settings(max_examples=16, deadline=None)
@given(n=st.integers(1, 11), threads=st.sampled_from([1, 2]), rb=st.integers(1, 6),
       size=st.sampled_from([(4, 4), (8, 8), (5, 9), (3, 3)]), kernel=st.sampled_from([1, 3]),
       density=st.sampled_from([0.2, 0.5, 1.0]), seed=st.integers(0, 9999))
def test_native_conv_grad_weight_sums_groups_of_images(n, threads, rb, size, kernel, density, seed):
    """Small stride-1 maps: each grad-weight task sums several whole images before its horizontal
    sums (tiles of at most 512 columns together), the batch split evenly into groups (the last may
    be smaller) and the block rows into chunks of about equal kept blocks; every image and block
    row must be counted once, on one and two threads, against the reference."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_conv("native", n, rb, 2, (8, 8), size, kernel, 1, kernel // 2, 1, density, torch.float32, seed)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(4, 4), (4, 8), (8, 8), (16, 16), (32, 32), (6, 6), (8, 6)], ids=str)
def test_native_pointwise_conv_maps(size, stride, threads, dtype):
    """1x1 convolutions without padding: the native engine reads their input (forward, grad-weight)
    and their gradient (grad-input) where they lie when every column tile is whole, else a padded
    copy; maps of 16, 32, 64, 256 and 1024 pixels and two that fill no whole tile (36, 48), strided
    too (the grad-input's spread gradient then needs the copy), against the reference."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_conv("native", 3, 2, 3, (16, 16), size, 1, stride, 0, 1, 0.5, dtype, 5)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("size", [(8, 8), (6, 6)], ids=str)
def test_native_pointwise_conv_never_reads_unused_channels(size):
    """Input channels no kept block reads hold NaN: the forward and the weight gradient stay those of
    zeros there, whether the input is read in place (8x8) or copied (6x6)."""
    g = torch.Generator().manual_seed(0)
    block = (16, 16)
    x = torch.randn(2, 48, *size, generator=g)
    w = torch.randn(32, 48, 1, 1, generator=g)
    mask = torch.zeros(w.shape, dtype=torch.bool)
    mask[:16, :16] = mask[16:, 32:] = True  # input channels 16-31 unused
    x_nan = x.clone()
    x_nan[:, 16:32] = float("nan")
    x_zero = x.clone()
    x_zero[:, 16:32] = 0.0
    grads = []
    for xi in (x_nan, x_zero):
        ws = w.clone().requires_grad_()
        with runs_on("native", "block_conv2d", phases=("forward", "backward")):
            y = block_sparse_conv2d(xi, ws, None, mask, block, 1, 0, 1, backend="native")
            y.backward(torch.ones_like(y))
        grads.append((y.detach(), ws.grad))
    assert torch.isfinite(grads[0][0]).all() and torch.isfinite(grads[0][1]).all()
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("threads", [1, 2])
def test_native_empty_batch(block, threads):
    """An empty batch on the native kernels gives empty outputs and a zero weight gradient (the task
    split divided by the number of column tiles, zero here, and the process died of SIGFPE)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_linear("native", 0, 2, 2, block, 0.5, torch.float32, 0)
        _check_conv("native", 0, 1, 1, block, (5, 6), 3, 1, 1, 1, 0.5, torch.float32, 1)
        _check_conv("native", 0, 1, 1, block, (5, 6), 3, 2, 1, 1, 0.5, torch.float32, 2)
    finally:
        torch.set_num_threads(previous)


def check_native_kernels():
    """A fixed sweep through the native kernels (also run under AVX2 in a fresh process)."""
    for block in SUPPORTED_BLOCKS:
        for dtype in DTYPES:
            _check_linear("native", 133, 3, 2, block, 0.5, dtype, 1)
            if block[1] >= 16:  # a wide layer: the row-major grad-weight's padded copies of x's rows
                _check_linear("native", 300, 1, 8224 // block[1], block, 0.5, dtype, 4, bias=False)
            _check_conv("native", 2, 2, 2, block, (9, 7), 3, 1, 1, 1, 0.5, dtype, 2)
            _check_conv("native", 2, 2, 1, block, (8, 9), 3, 2, 1, 1, 0.5, dtype, 3)
            # Stride 1 reads the padded input in place: images of several column tiles, tiles that
            # end mid-row and at the last column (reads past it), dilation, full and empty masks.
            _check_conv("native", 2, 2, 2, block, (21, 19), 3, 1, 1, 1, 0.5, dtype, 4)
            _check_conv("native", 1, 1, 2, block, (17, 30), 3, 1, 2, 2, 1.0, dtype, 5)
            _check_conv("native", 3, 2, 1, block, (13, 40), 1, 1, 0, 1, 0.0, dtype, 6)
            # Grad-weight tasks: a 50x50 image's 2598 grid columns in two tiles; five 4x4 images
            # summed by one task (block rows split into chunks of about equal kept blocks).
            _check_conv("native", 1, 1, 1, block, (50, 50), 3, 1, 1, 1, 0.5, dtype, 7)
            _check_conv("native", 5, 2, 1, block, (4, 4), 3, 1, 1, 1, 0.5, dtype, 8)


def test_native_avx2_kernels_match_reference():
    """The AVX2 micro-kernels (2-row x 4-vector tiles), in a fresh process: the instruction set is
    chosen once per process."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import importlib.util as u, sys, types\n"
            "def load(name, path):\n"
            "    s = u.spec_from_file_location(name, path); m = u.module_from_spec(s); sys.modules[name] = m\n"
            "    s.loader.exec_module(m); return m\n"
            "sys.modules['tests'] = types.ModuleType('tests')\n"
            "sys.modules['tests.ops'] = types.ModuleType('tests.ops')\n"
            "load('tests.ops.helpers', %r)\n"
            "load('block_ops', %r).check_native_kernels()\n"
            "import torch; assert torch.ops.ebsparse.cpu_capability() == 'avx2'\n"
            % (os.path.join(here, "helpers.py"), os.path.abspath(__file__)))
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ, EBSPARSE_CPU_CAPABILITY="avx2",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def test_native_default_kernels_match_reference():
    check_native_kernels()


@pytest.mark.parametrize("op", ["linear", "conv2d"])
def test_gradcheck_fp64(op):
    g = torch.Generator().manual_seed(0)
    block = (4, 4)
    if op == "linear":
        x = torch.randn(5, 8, dtype=torch.float64, generator=g, requires_grad=True)
        w = torch.randn(8, 8, dtype=torch.float64, generator=g, requires_grad=True)
        mask = random_block_mask(w.shape, 0.5, block, generator=g)
        fn = lambda x, w: block_sparse_linear(x, w, None, mask, block, backend="native")  # noqa: E731
    else:
        x = torch.randn(2, 8, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
        w = torch.randn(4, 8, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
        mask = random_block_mask(w.shape, 0.5, block, generator=g)
        fn = lambda x, w: block_sparse_conv2d(x, w, None, mask, block, 1, 1, backend="native")  # noqa: E731
    with runs_on("native", f"block_{op}", phases=("forward", "backward")):
        # gradcheck perturbs dropped weights too: their numerical gradient is 0, as the kernels say
        torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-7)


def test_dense_weight_grad_gives_the_full_gradient():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(40, 32, generator=g), torch.randn(32, 32, generator=g, requires_grad=True)
    mask = random_block_mask(w.shape, 0.25, (8, 8), generator=g)
    block_sparse_linear(x, w, None, mask, (8, 8), backend="native", dense_weight_grad=True).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(40, 32).t() @ x, atol=1e-4, rtol=1e-5)


def test_index_reused_and_checked():
    mask = random_block_mask((32, 16), 0.5, (16, 16), generator=torch.Generator().manual_seed(1))
    index = build_block_index(mask, (16, 16))
    x, w = torch.randn(3, 16), torch.randn(32, 16)
    y = block_sparse_linear(x, w, None, mask, (16, 16), index=index, backend="native")
    torch.testing.assert_close(y, sparse_linear_reference(x, w, None, mask))
    with pytest.raises(ValueError, match="index: does not describe"):
        block_sparse_linear(x, w, None, mask, (8, 8), index=index)
    with pytest.raises(ValueError, match="not a \\(8, 8\\) block pattern"):
        block_sparse_linear(x, w, None, torch.rand(32, 16) < 0.5, (8, 8))
    with pytest.raises(ValueError, match="not supported"):
        block_sparse_linear(x, w, None, mask, (2, 2))
    with pytest.raises(RuntimeError, match="cannot run block_linear"):
        block_sparse_linear(x.to(torch.bfloat16), w.to(torch.bfloat16), None, mask, (16, 16), backend="native")
