"""The tensor-core 2:4 linear kernels (ebsparse.triton.twofour_linear) against masked-dense
PyTorch, for float32, bfloat16 and float16, with the weight dense-shaped (NaN at the dropped
positions, so reading one would show) or compressed; and their ahead-of-time compile for sm_80 and
sm_90, whose PTX must hold tensor-core instructions.

Without a GPU the kernels run under the Triton interpreter (tests/conftest.py), so shapes are small.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse import triton as tk
from ebsparse.formats.twofour import magnitude_2_4_rows, pack_2_4_rows
from ebsparse.triton import twofour_linear_kernels as T

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REASONS = tk.unavailable_reasons(DEVICE)
needs_triton = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def tol(dtype, k):
    """Against the float32 reference rounded to `dtype`: one rounding of the output plus the
    accumulation order (fp32 in both; tf32 on a GPU where torch allows it)."""
    eps = {torch.float32: 1e-5 if not torch.backends.cuda.matmul.allow_tf32 else 2e-3,
           torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}[dtype]
    return dict(rtol=2 * eps, atol=2 * eps * max(1.0, k ** 0.5))


def problem(n, k, m, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=gen)
    mask = magnitude_2_4_rows(w)
    w = w.to(dtype)
    values, meta = pack_2_4_rows(w, mask)
    dense = torch.where(mask, w, torch.full((), float("nan"), dtype=dtype))
    x = torch.randn(n, k, generator=gen).to(dtype)
    dy = torch.randn(n, m, generator=gen).to(dtype)
    bias = torch.randn(m, generator=gen).to(dtype)
    to = lambda *ts: [t.to(DEVICE) for t in ts]  # noqa: E731
    return to(mask, dense, values, meta, x, dy, bias)


def close(actual, expected, dtype, k):
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.float(), expected.float(), **tol(dtype, k))


@needs_triton
@settings(max_examples=8)
@given(n=st.integers(0, 40), groups=st.integers(1, 12), m=st.integers(1, 40), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(DTYPES), compressed=st.booleans(), with_bias=st.booleans())
def test_forward_and_grad_input_match_masked_dense(n, groups, m, seed, dtype, compressed, with_bias):
    k = 4 * groups
    mask, dense, values, meta, x, dy, bias = problem(n, k, m, dtype, seed)
    w = values if compressed else dense
    b = bias if with_bias else None
    y = T.twofour_linear(x, w, meta, b, compressed=compressed)
    close(y, T.twofour_linear_reference(x, w, meta, b, compressed=compressed), dtype, k)
    assert not y.isnan().any()
    dx = T.twofour_linear_grad_input(dy, w, meta, compressed=compressed)
    close(dx, T.twofour_linear_grad_input_reference(dy, w, meta, compressed=compressed), dtype, m)
    assert not dx.isnan().any()


@needs_triton
@settings(max_examples=8)
@given(n=st.integers(0, 40), groups=st.integers(1, 12), m=st.integers(1, 40), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(DTYPES))
def test_grad_weight_is_masked_dense_and_exactly_zero_off_the_pattern(n, groups, m, seed, dtype):
    k = 4 * groups
    mask, dense, values, meta, x, dy, bias = problem(n, k, m, dtype, seed)
    dw = T.twofour_linear_grad_weight(dy, x, meta)
    close(dw, T.twofour_linear_grad_weight_reference(dy, x, meta), dtype, max(n, 1))
    assert bool((dw[~mask] == 0).all())


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tiles_beyond_one_block_in_every_dimension(dtype):
    # 16x16x16 tiles in the interpreter: 37 x 52 x 23 spans several tiles with ragged edges.
    n, k, m = 37, 52, 23
    mask, dense, values, meta, x, dy, bias = problem(n, k, m, dtype, 1)
    close(T.twofour_linear(x, dense, meta, bias), T.twofour_linear_reference(x, dense, meta, bias), dtype, k)
    close(T.twofour_linear_grad_input(dy, dense, meta), T.twofour_linear_grad_input_reference(dy, dense, meta),
          dtype, m)
    close(T.twofour_linear_grad_weight(dy, x, meta), T.twofour_linear_grad_weight_reference(dy, x, meta), dtype, n)


@needs_triton
def test_bad_arguments_name_themselves():
    mask, dense, values, meta, x, dy, bias = problem(4, 8, 3, torch.float32, 0)
    with pytest.raises(RuntimeError, match="meta"):
        T.twofour_linear(x, dense, meta[:, :1].contiguous(), None)
    with pytest.raises(RuntimeError, match="compressed values"):
        T.twofour_linear(x, dense, meta, None, compressed=True)
    with pytest.raises(RuntimeError, match="weight: expected dtype"):
        T.twofour_linear(x, dense.half(), meta, None)
    with pytest.raises(RuntimeError, match="input: expected float32, float16 or bfloat16"):
        T.twofour_linear(x.double(), dense.double(), meta, None)
    with pytest.raises(RuntimeError, match="grad_output"):
        T.twofour_linear_grad_input(dy[:, :2], dense, meta)


# ---- ahead-of-time compile: the kernels are tensor-core kernels ----------------------------------

triton = pytest.importorskip("triton")
from ebsparse.triton.aot import compile_for  # noqa: E402

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def kernels(dtype):
    """(kernel, signature, constexprs) of the three kernels, as their launchers call them."""
    p = "*" + TRITON_TYPE[dtype]
    sizes = {"N": "i32", "M": "i32", "K": "i32"}
    return {
        "forward": (T._forward_kernel, {"x_ptr": p, "w_ptr": p, "meta_ptr": "*u8", "bias_ptr": p, "y_ptr": p, **sizes,
                                        "stride_xn": "i64", "stride_wm": "i64", "stride_meta": "i64",
                                        "stride_yn": "i64"}, dict(HAS_BIAS=True, COMPRESSED=False)),
        "forward-compressed": (T._forward_kernel, {"x_ptr": p, "w_ptr": p, "meta_ptr": "*u8", "bias_ptr": p,
                                                   "y_ptr": p, **sizes, "stride_xn": "i64", "stride_wm": "i64",
                                                   "stride_meta": "i64", "stride_yn": "i64"},
                               dict(HAS_BIAS=False, COMPRESSED=True)),
        "grad_input": (T._grad_input_kernel, {"dy_ptr": p, "w_ptr": p, "meta_ptr": "*u8", "dx_ptr": p, **sizes,
                                              "stride_dyn": "i64", "stride_wm": "i64", "stride_meta": "i64",
                                              "stride_dxn": "i64"}, dict(COMPRESSED=False)),
        "grad_weight": (T._grad_weight_kernel, {"dy_ptr": p, "x_ptr": p, "meta_ptr": "*u8", "dw_ptr": p, **sizes,
                                                "stride_dyn": "i64", "stride_xn": "i64", "stride_meta": "i64",
                                                "stride_dwm": "i64"}, {}),
    }


def compiled(name, dtype, arch, config):
    fn, sig, constexprs = kernels(dtype)[name]
    a, b, kb, warps, stages = config
    # As the JIT specialises a launch whose pointers, strides and sizes are multiples of 16.
    aligned = tuple(x for x in sig if x.endswith("_ptr") or x.startswith("stride") or x in ("N", "M", "K"))
    return compile_for(fn, sig, dict(constexprs, UPCAST=False, PRECISION="tf32", BLOCK_A=a, BLOCK_B=b,
                                     BLOCK_K=kb), arch, num_warps=warps, num_stages=stages,
                       divisible_by_16=aligned)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["forward", "forward-compressed", "grad_input", "grad_weight"])
def test_kernels_compile_to_tensor_core_ptx(name, dtype, arch):
    k = compiled(name, dtype, arch, T.tensor_core_configs()[0])
    assert k.uses_tensor_cores, f"{name} {dtype} sm_{arch}: no mma/wgmma in the PTX"
    if arch == 90 and dtype != torch.float32:
        assert k.count("wgmma.mma_async.sync.aligned") > 0 or "wgmma" in k.ptx
    # The streamed operand tiles are pipelined through shared memory with async copies (16-byte
    # ones for the 16-bit dtypes).
    if name != "forward-compressed":
        assert "cp.async" in k.ptx
        if dtype != torch.float32:
            assert k.count("cp.async.cg.shared.global") > 0


@pytest.mark.parametrize("name", ["forward", "grad_input", "grad_weight"])
def test_every_autotuned_config_fits_an_sm80(name):
    for config in T.tensor_core_configs():
        k = compiled(name, torch.bfloat16, 80, config)
        assert k.uses_tensor_cores
        assert k.shared_bytes <= SHARED_LIMIT[80], f"{name} {config}: {k.shared_bytes} B of shared memory"
