"""The Triton block kernels (ebsparse/triton/block_*.py): against the pure-PyTorch reference under the
interpreter (small shapes; fp32, fp16, bf16; dropped weights NaN), through the triton backend with
proof that it ran, and compiled ahead of time for sm_80 / sm_90 with tensor-core `mma` in the PTX."""

from __future__ import annotations

import pytest
import torch

from ebsparse import triton as tk
from ebsparse.formats.block import build_block_index, random_block_mask
from ebsparse.ops import block_sparse_conv2d, block_sparse_linear, sparse_conv2d_reference, sparse_linear_reference
from tests.ops.helpers import runs_on

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REASONS = tk.unavailable_reasons(DEVICE)
pytestmark = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-2, atol=2e-2),
       torch.bfloat16: dict(rtol=5e-2, atol=1e-1)}


def _tensors(shape, dtype, gen):
    return torch.randn(shape, generator=gen).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block,density", [((16, 16), 0.5), ((4, 4), 0.3), ((1, 8), 0.5), ((32, 32), 1.0),
                                           ((8, 8), 0.0)])
def test_block_linear(dtype, block, density):
    gen = torch.Generator().manual_seed(0)
    m, k, n = 2 * max(block[0], 16), 3 * block[1], 7
    mask = random_block_mask((m, k), density, block, generator=gen).to(DEVICE)
    w = _tensors((m, k), dtype, gen)
    x, b = _tensors((n, k), dtype, gen).requires_grad_(), _tensors((m,), dtype, gen)
    wn = w.masked_fill(~mask, float("nan")).requires_grad_()
    with runs_on("triton", "block_linear", phases=("forward", "backward")):
        y = block_sparse_linear(x, wn, b, mask, block, backend="triton")
        dy = _tensors(y.shape, dtype, gen)
        y.backward(dy)
    xr, wr = x.detach().double().requires_grad_(), w.double().requires_grad_()
    ref = sparse_linear_reference(xr, wr, b.double(), mask)
    ref.backward(dy.double())
    torch.testing.assert_close(y.double(), ref, **TOL[dtype])
    torch.testing.assert_close(x.grad.double(), xr.grad, **TOL[dtype])
    torch.testing.assert_close(wn.grad.double(), wr.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block,stride,padding,dilation", [((16, 16), 1, 1, 1), ((8, 8), 2, 1, 1),
                                                           ((4, 4), 1, 2, 2), ((16, 16), 2, 0, 1)])
def test_block_conv2d(dtype, block, stride, padding, dilation):
    gen = torch.Generator().manual_seed(1)
    co, ci = 2 * block[0], 2 * block[1]
    mask = random_block_mask((co, ci, 3, 3), 0.5, block, generator=gen).to(DEVICE)
    w = _tensors((co, ci, 3, 3), dtype, gen)
    x, b = _tensors((2, ci, 7, 6), dtype, gen).requires_grad_(), _tensors((co,), dtype, gen)
    wn = w.masked_fill(~mask, float("nan")).requires_grad_()
    with runs_on("triton", "block_conv2d", phases=("forward", "backward")):
        y = block_sparse_conv2d(x, wn, b, mask, block, stride, padding, dilation, backend="triton")
        dy = _tensors(y.shape, dtype, gen)
        y.backward(dy)
    xr, wr = x.detach().double().requires_grad_(), w.double().requires_grad_()
    ref = sparse_conv2d_reference(xr, wr, b.double(), mask, stride, padding, dilation)
    ref.backward(dy.double())
    tol = dict(TOL[dtype])
    tol["atol"] *= 3
    torch.testing.assert_close(y.double(), ref, **tol)
    torch.testing.assert_close(x.grad.double(), xr.grad, **tol)
    torch.testing.assert_close(wn.grad.double(), wr.grad, **tol)


def test_fp64_is_refused_with_reasons():
    mask = torch.ones(16, 16, dtype=torch.bool, device=DEVICE)
    x = torch.randn(2, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(RuntimeError, match="float64 not supported"):
        block_sparse_linear(x, x.new_ones(16, 16), None, mask, (16, 16), backend="triton")


# ---- ahead-of-time compilation: tensor cores on the real targets ----------------------------------

triton = pytest.importorskip("triton")
from ebsparse.triton.aot import compile_for  # noqa: E402
from ebsparse.triton.block_sddmm import _block_sddmm_kernel  # noqa: E402
from ebsparse.triton.block_spmm import _block_spmm_kernel  # noqa: E402

_SPMM_SIG = {name: "i32" for name in ("H", "W", "Ho", "Wo", "P", "sxn", "sxc", "sxh", "sxw", "son", "sor", "soh",
                                      "sow", "swr", "swc", "swh", "sww", "stride_h", "stride_w", "pad_h", "pad_w",
                                      "dil_h", "dil_w")}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("block", [(16, 16), (32, 32)])
def test_block_kernels_compile_to_tensor_cores(arch, dtype, block):
    ptrs = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "bias_ptr": f"*{dtype}", "ptr_ptr": "*i32",
            "idx_ptr": "*i32", "out_ptr": f"*{dtype}"}
    spmm = compile_for(_block_spmm_kernel, {**ptrs, **_SPMM_SIG},
                       {"KH": 3, "KW": 3, "BO": block[0], "BI": block[1], "BOP": block[0], "BIP": block[1],
                        "BLOCK_P": 64, "HAS_BIAS": True, "UPCAST": False}, arch)
    assert spmm.uses_tensor_cores and spmm.shared_bytes <= 228 * 1024
    sig = {"x_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", "rowof_ptr": "*i32", "idx_ptr": "*i32", "dw_ptr": f"*{dtype}",
           **{k: "i32" for k in ("H", "W", "Ho", "Wo", "P", "sxn", "sxc", "sxh", "sxw", "sdn", "sdr", "sdh", "sdw",
                                 "swr", "swc", "swh", "sww", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h",
                                 "dil_w")}}
    sddmm = compile_for(_block_sddmm_kernel, sig, {"KW": 3, "BO": block[0], "BI": block[1], "BOP": block[0],
                                                   "BIP": block[1], "BLOCK_P": 64, "UPCAST": False}, arch)
    assert sddmm.uses_tensor_cores
