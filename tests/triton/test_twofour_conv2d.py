"""The tensor-core 2:4 conv kernels (ebsparse.triton.twofour_conv2d_kernels, implicit GEMM over
channels-last data) against the masked-dense reference for float32, bfloat16 and float16 over
geometries (kernel, stride, padding, dilation, odd sizes), NaN at dropped weights; and their
ahead-of-time compile for sm_80 / sm_90 with tensor-core instructions in the PTX."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse import triton as tk
from ebsparse.formats.twofour import from_rows_view, magnitude_2_4_rows, pack_2_4_rows, rows_view
from ebsparse.ops import sparse_conv2d_reference
from ebsparse.triton import twofour_conv2d_kernels as C

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REASONS = tk.unavailable_reasons(DEVICE)
needs_triton = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


def _close(actual, expected, dtype, fan):
    assert actual.dtype == dtype
    eps = EPS[dtype] if not (dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else 2e-3
    torch.testing.assert_close(actual.double().cpu(), expected, rtol=4 * eps, atol=4 * eps * max(1.0, fan ** 0.5))


geometry = st.tuples(st.sampled_from([(1, 1), (3, 3), (2, 3)]), st.sampled_from([1, 2]), st.sampled_from([0, 1, 2]),
                     st.sampled_from([1, 2]))


@needs_triton
@settings(max_examples=10)
@given(n=st.integers(1, 2), ci=st.sampled_from([4, 8, 20]), co=st.integers(1, 20), hw=st.tuples(st.integers(1, 7),
       st.integers(1, 7)), geo=geometry, dtype=st.sampled_from(DTYPES), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_and_gradients_match_the_reference(n, ci, co, hw, geo, dtype, bias, seed):
    (kh, kw), s, p, d = geo
    h, w = hw
    if h + 2 * p - d * (kh - 1) < 1 or w + 2 * p - d * (kw - 1) < 1:
        return  # empty output
    g = torch.Generator().manual_seed(seed)
    w64 = torch.randn(co, ci, kh, kw, generator=g, dtype=torch.float64)
    mask = from_rows_view(magnitude_2_4_rows(rows_view(w64)), w64.shape)
    meta = pack_2_4_rows(rows_view(mask), rows_view(mask))[1].reshape(co, -1)
    x64 = torch.randn(n, ci, h, w, generator=g, dtype=torch.float64)
    b64 = torch.randn(co, generator=g, dtype=torch.float64) if bias else None
    # the reference sees the inputs rounded to dtype
    x64, w64 = x64.to(dtype).double(), w64.to(dtype).double()
    b64 = b64.to(dtype).double() if bias else None
    to = lambda t: t.to(dtype).to(DEVICE)  # noqa: E731
    weight = to(torch.where(mask, w64, torch.nan))
    geom = ([s, s], [p, p], [d, d])
    y = C.twofour_conv2d(to(x64), weight, meta.to(DEVICE), to(b64) if bias else None, *geom)
    xr, wr = x64.clone().requires_grad_(), torch.where(mask, w64, 0.0).requires_grad_()
    yr = sparse_conv2d_reference(xr, wr, b64, mask, s, p, d)
    dy64 = torch.randn(yr.shape, generator=g, dtype=torch.float64).to(dtype).double()
    yr.backward(dy64)
    _close(y, yr, dtype, ci * kh * kw)
    dx = C.twofour_conv2d_grad_input(to(dy64), weight, meta.to(DEVICE), [n, ci, h, w], *geom)
    _close(dx, xr.grad, dtype, co * kh * kw)
    dw = C.twofour_conv2d_grad_weight(to(dy64), to(x64), meta.to(DEVICE), [co, ci, kh, kw], *geom)
    _close(dw, wr.grad, dtype, n * h * w)
    assert bool((dw.cpu()[~mask] == 0).all())


@needs_triton
def test_bad_meta_and_channels_name_themselves():
    x, w = torch.randn(1, 6, 4, 4), torch.randn(2, 6, 3, 3)
    with pytest.raises(RuntimeError, match="multiple of 4"):
        C.twofour_conv2d(x, w, torch.zeros(2, 13, dtype=torch.uint8), None, [1, 1], [1, 1], [1, 1])
    x, w = torch.randn(1, 8, 4, 4), torch.randn(2, 8, 3, 3)
    with pytest.raises(RuntimeError, match="meta: expected uint8 of shape"):
        C.twofour_conv2d(x, w, torch.zeros(2, 5, dtype=torch.uint8), None, [1, 1], [1, 1], [1, 1])


# ---- ahead-of-time compile -----------------------------------------------------------------------

pytest.importorskip("triton")
from ebsparse.triton.aot import compile_for  # noqa: E402
from ebsparse.triton.twofour_linear_kernels import tensor_core_configs  # noqa: E402

TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
GEOMETRY = {name: "i32" for name in ("Co", "Ci", "H", "W", "Ho", "Wo", "SH", "SW", "PH", "PW", "DH", "DW")}


def _signature(name, dtype):
    t = "*" + TRITON_TYPE[dtype]
    if name == "forward":
        return C._forward_kernel, {"x_ptr": t, "w_ptr": t, "meta_ptr": "*u8", "bias_ptr": t, "y_ptr": t, "P": "i32",
                                   **GEOMETRY}, {"HAS_BIAS": True}
    if name == "grad_input":
        return C._grad_input_kernel, {"dy_ptr": t, "w_ptr": t, "meta_ptr": "*u8", "dx_ptr": t, "Q": "i32",
                                      **GEOMETRY}, {}
    return C._grad_weight_kernel, {"dy_ptr": t, "x_ptr": t, "meta_ptr": "*u8", "dw_ptr": t, "P": "i32",
                                   **GEOMETRY}, {}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["forward", "grad_input", "grad_weight"])
def test_conv_kernels_compile_to_tensor_core_ptx(name, dtype, arch):
    fn, sig, constexprs = _signature(name, dtype)
    a, b, kb, warps, stages = tensor_core_configs()[0]
    aligned = tuple(x for x in sig if x.endswith("_ptr") or x in ("Ci", "Co"))
    k = compile_for(fn, sig, dict(constexprs, KW=3, TAPS=9, UPCAST=False, PRECISION="tf32", BLOCK_A=a, BLOCK_B=b,
                                  BLOCK_K=kb), arch, num_warps=warps, num_stages=stages, divisible_by_16=aligned)
    assert k.uses_tensor_cores, f"{name} {dtype} sm_{arch}: no mma/wgmma in the PTX"
    assert k.shared_bytes <= (163 if arch == 80 else 227) * 1024
