"""The Triton sparse conv2d kernels (forward, grad-input, grad-weight) against masked-dense PyTorch.

Run under the Triton interpreter on a machine without a GPU (tests/conftest.py), so the
shapes are small. Weight entries outside the pattern are NaN, so reading one would show; odd
sizes, stride, dilation, padding larger than the kernel reach, densities 0 and 1, float32/float64.
"""

from __future__ import annotations

import pytest
import torch

from ebsparse import triton as tk
from tests.triton.test_triton_kernels import DEVICE, REASONS, TOL, compressed

pytestmark = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))

# n, ci, co, h, w, (kh, kw), stride, padding, dilation
GEOMETRIES = [
    (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),
    (2, 3, 5, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 4, 2, 9, 8, (3, 2), (2, 1), (2, 0), (1, 2)),
    (2, 2, 3, 6, 5, (5, 5), (2, 2), (3, 1), (1, 1)),
    (1, 36, 2, 3, 3, (1, 1), (1, 1), (0, 0), (1, 1)),  # 36 kept taps in a row: more than one BLOCK_J step
    (0, 2, 3, 4, 4, (3, 3), (1, 1), (1, 1), (1, 1)),  # empty batch
]


def conv_problem(geometry, density, dtype, seed=0):
    n, ci, co, h, w, k, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(seed)
    shape = (co, ci, *k)
    mask = torch.rand(shape, generator=gen) < density
    dense = torch.randn(shape, generator=gen, dtype=dtype)
    weight = torch.where(mask, dense, torch.full((), float("nan"), dtype=dtype))
    x = torch.randn(n, ci, h, w, generator=gen, dtype=dtype)
    masked = torch.where(mask, dense, torch.zeros((), dtype=dtype))
    y = torch.nn.functional.conv2d(x, masked, None, stride, padding, dilation)
    dy = torch.randn(y.shape, generator=gen, dtype=dtype)
    bias = torch.randn(co, generator=gen, dtype=dtype)
    flat = mask.reshape(co, -1)
    row_ptr, col_idx = compressed(flat)
    col_ptr, row_idx = compressed(flat.T)
    to = dict(device=DEVICE)
    return dict(mask=mask.to(**to), masked=masked.to(**to), weight=weight.to(**to), x=x.to(**to), dy=dy.to(**to),
                bias=bias.to(**to), rp=row_ptr.to(**to), ci=col_idx.to(**to), cp=col_ptr.to(**to),
                ri=row_idx.to(**to), geo=(list(stride), list(padding), list(dilation)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("density", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_conv_forward_and_grads(geometry, density, dtype):
    p = conv_problem(geometry, density, dtype)
    stride, padding, dilation = p["geo"]
    x, dy, masked = p["x"], p["dy"], p["masked"]
    tol = TOL[dtype]

    y = tk.csr_conv2d(x, p["weight"], p["bias"], p["rp"], p["ci"], stride, padding, dilation)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, masked, p["bias"], stride, padding, dilation), **tol)

    dx = tk.csr_conv2d_grad_input(dy, p["weight"], p["cp"], p["ri"], list(x.shape), stride, padding, dilation)
    torch.testing.assert_close(dx, torch.nn.grad.conv2d_input(list(x.shape), masked, dy, stride, padding, dilation),
                               **tol)

    dw = tk.csr_conv2d_grad_weight(dy, x, p["rp"], p["ci"], list(masked.shape), stride, padding, dilation)
    full = torch.nn.grad.conv2d_weight(x, list(masked.shape), dy, stride, padding, dilation)
    torch.testing.assert_close(dw, torch.where(p["mask"], full, 0.0), **tol)
    assert not dw[~p["mask"]].any(), "grad_weight must be exactly zero outside the pattern"


def test_conv_references_and_cpp_op_agree():
    """The kernels' *_reference functions, and torch.ops.ebsparse (same semantics) on the CPU."""
    p = conv_problem(GEOMETRIES[2], 0.5, torch.float64)
    stride, padding, dilation = p["geo"]
    x, dy, w = p["x"], p["dy"], p["masked"]
    args = (stride, padding, dilation)
    got = [tk.csr_conv2d(x, w, p["bias"], p["rp"], p["ci"], *args),
           tk.csr_conv2d_grad_input(dy, w, p["cp"], p["ri"], list(x.shape), *args),
           tk.csr_conv2d_grad_weight(dy, x, p["rp"], p["ci"], list(w.shape), *args)]
    refs = [tk.csr_conv2d_reference(x, w, p["bias"], p["rp"], p["ci"], *args),
            tk.csr_conv2d_grad_input_reference(dy, w, p["cp"], p["ri"], list(x.shape), *args),
            tk.csr_conv2d_grad_weight_reference(dy, x, p["rp"], p["ci"], list(w.shape), *args)]
    for a, b in zip(got, refs):
        torch.testing.assert_close(a, b)
    pytest.importorskip("ebsparse._C")
    ops = torch.ops.ebsparse
    c = {k: v.cpu() for k, v in p.items() if isinstance(v, torch.Tensor)}
    cpp = [ops.csr_conv2d(c["x"], c["masked"], c["bias"], c["rp"], c["ci"], *args),
           ops.csr_conv2d_grad_input(c["dy"], c["masked"], c["cp"], c["ri"], list(x.shape), *args),
           ops.csr_conv2d_grad_weight(c["dy"], c["x"], c["rp"], c["ci"], list(w.shape), *args)]
    for a, b in zip(got, cpp):
        torch.testing.assert_close(a.cpu(), b)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: tk.csr_conv2d(p["x"][0], p["weight"], None, p["rp"], p["ci"], *p["geo"]), r"input: expected \(N, C, H, W\)"),
        (lambda p: tk.csr_conv2d(p["x"], p["weight"][:, :1], None, p["rp"], p["ci"], *p["geo"]), r"weight: expected \(Co, 3"),
        (lambda p: tk.csr_conv2d(p["x"], p["weight"], None, p["rp"], p["ci"], [0, 1], [1, 1], [1, 1]), "stride: expected two integers >= 1"),
        (lambda p: tk.csr_conv2d(p["x"], p["weight"], None, p["rp"], p["ci"], [1, 1], [-1, 1], [1, 1]), "padding: expected two integers >= 0"),
        (lambda p: tk.csr_conv2d(p["x"], p["weight"], None, p["rp"][:-1], p["ci"], *p["geo"]), "row_ptr: expected 6 entries"),
        (lambda p: tk.csr_conv2d(p["x"], p["weight"], p["bias"][:-1], p["rp"], p["ci"], *p["geo"]), r"bias: expected \(5,\)"),
        (lambda p: tk.csr_conv2d(p["x"][..., :1, :1], p["weight"], None, p["rp"], p["ci"], [1, 1], [0, 0], [1, 1]), "too small for kernel"),
        (lambda p: tk.csr_conv2d_grad_input(p["dy"][:, :-1], p["weight"], p["cp"], p["ri"], list(p["x"].shape), *p["geo"]), "grad_output: expected"),
        (lambda p: tk.csr_conv2d_grad_input(p["dy"], p["weight"], p["cp"], p["ri"].long(), list(p["x"].shape), *p["geo"]), "row_idx: expected a 1-D int32"),
        (lambda p: tk.csr_conv2d_grad_weight(p["dy"], p["x"].float(), p["rp"], p["ci"], list(p["weight"].shape), *p["geo"]), "input: expected dtype"),
    ],
)
def test_conv_argument_errors_name_the_argument(call, match):
    p = conv_problem(GEOMETRIES[1], 0.5, torch.float64)
    with pytest.raises(RuntimeError, match=match):
        call(p)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=str)
def test_conv_half_dtypes_accumulate_in_float32(geometry, dtype):
    p = conv_problem(geometry, 0.4, dtype)
    stride, padding, dilation = p["geo"]
    x, dy, masked = p["x"], p["dy"], p["masked"].float()
    eps = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}[dtype]
    tol = dict(rtol=4 * eps, atol=4 * eps * max(1.0, masked[0].numel() ** 0.5))
    y = tk.csr_conv2d(x, p["weight"], p["bias"], p["rp"], p["ci"], stride, padding, dilation)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), torch.nn.functional.conv2d(x.float(), masked, p["bias"].float(), stride,
                                                                     padding, dilation), **tol)
    dw = tk.csr_conv2d_grad_weight(dy, x, p["rp"], p["ci"], list(masked.shape), stride, padding, dilation)
    full = torch.nn.grad.conv2d_weight(x.float(), list(masked.shape), dy.float(), stride, padding, dilation)
    torch.testing.assert_close(dw.float(), torch.where(p["mask"], full, 0.0),
                               rtol=4 * eps, atol=4 * eps * max(1.0, dy[:, 0].numel() ** 0.5))
