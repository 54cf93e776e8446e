"""Triton tensor-core kernels of the 2:4 sparse linear: tiled `tl.dot`, fp32 accumulation.

The weight W (M, K) keeps 2 of every 4 consecutive entries along K; `meta` (M, K/4) uint8 holds the
two kept positions of each group (p0 | p1 << 2, `ebsparse.formats.twofour.pack_2_4_rows`). The
weight operand is either the dense-shaped W (training: the optimizer updates it in place, and
reading it once beats compressing it every step) or the compressed values (M, K/2) of
`compress_2_4` (`COMPRESSED`: half the weight bytes, for a weight reused unchanged). Either way a
weight tile is expanded in registers to its dense (BM, BK) form, dropped entries set to exactly
zero (NaN and inf there included), and multiplied on the tensor cores:

- forward      Y (N, M)  = X (N, K) . W^T + b      programs over (N, M) tiles, loop over K;
- grad-input   dX (N, K) = dY (N, M) . W            programs over (N, K) tiles, loop over M;
- grad-weight  dW (M, K) = mask o (dY^T . X)        programs over (M, K) tiles, loop over N;
  dropped positions are written as exact zeros in the epilogue.

Why not a compacted K (the kept values times a gather of the matching activations): every row of
W keeps different positions, so the K-compacted activation tile would differ per output row and
there is no shared operand for one `tl.dot`; it degenerates into per-row dot products on CUDA
cores. Skipping the zeros' math needs the hardware's per-row selection (sparse tensor cores,
`mma.sp`, which Triton does not expose): that is `ebsparse.backends.semi_structured`. These
kernels do the dense math at tensor-core speed with the masking fused, so they save the dense
path's masked-weight and masked-gradient passes and, compressed, half the weight bytes: ahead of
dense cuBLAS only where the weight traffic dominates (small batches; see bench/roofline.py).

Under TRITON_INTERPRET=1 the operands of `tl.dot` are widened to float32 first (`UPCAST`): the
interpreter's numpy `dot` mishandles bfloat16. bf16 x bf16 products are exact in float32, so this
is the tensor cores' arithmetic (fp32 accumulation) in another order.
"""

from __future__ import annotations

import torch

from ._common import _interpreting, cdiv, kernel, require_available, tl, triton

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (BLOCK_A, BLOCK_B, BLOCK_K, num_warps, num_stages): the output tile (A x B) and the reduction step.
# BLOCK_K is a multiple of 4 (whole 2:4 groups). The first is the one the interpreter runs.
CONFIGS = [
    (16, 16, 16, 1, 1),
    (128, 128, 32, 4, 3),
    (128, 64, 64, 4, 3),
    (64, 128, 64, 4, 3),
    (128, 256, 32, 8, 3),
    (64, 64, 32, 4, 4),
]


def tensor_core_configs():
    """The configs autotuning chooses from on a GPU (the 16x16 one is for the interpreter)."""
    return CONFIGS[1:]


@kernel
def _forward_kernel(x_ptr, w_ptr, meta_ptr, bias_ptr, y_ptr, N, M, K, stride_xn, stride_wm, stride_meta,
                    stride_yn, HAS_BIAS: tl.constexpr, COMPRESSED: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """Y[n, m] = sum_k X[n, k] W[m, k] (kept k) + b[m]; tile (BLOCK_A rows n, BLOCK_B columns m)."""
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_m = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    n_ok = offs_n < N
    m_ok = offs_m < M
    acc = tl.full([BLOCK_A, BLOCK_B], 0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < K
        x = tl.load(x_ptr + offs_n[:, None] * stride_xn + kk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        wm = m_ok[:, None] & k_ok[None, :]
        meta = tl.load(meta_ptr + offs_m[:, None] * stride_meta + (kk // 4)[None, :], mask=wm, other=0).to(tl.int32)
        pos = (kk % 4)[None, :]
        first = pos == (meta & 3)
        keep = (first | (pos == ((meta >> 2) & 3))) & wm
        if COMPRESSED:
            col = 2 * (kk // 4)[None, :] + (1 - first.to(tl.int64))
        else:
            col = kk[None, :]
        # Dense: a whole-tile load (vectorised; bounds mask only), dropped entries zeroed after.
        w = tl.load(w_ptr + offs_m[:, None] * stride_wm + col, mask=keep if COMPRESSED else wm, other=0)
        w = tl.where(keep, w, 0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_m, mask=m_ok, other=0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_n[:, None] * stride_yn + offs_m[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & m_ok[None, :])


@kernel
def _grad_input_kernel(dy_ptr, w_ptr, meta_ptr, dx_ptr, N, M, K, stride_dyn, stride_wm, stride_meta, stride_dxn,
                       COMPRESSED: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """dX[n, k] = sum_m dY[n, m] W[m, k] (kept); tile (BLOCK_A rows n, BLOCK_B columns k), the
    reduction over m in steps of BLOCK_K."""
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    kk = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    n_ok = offs_n < N
    k_ok = kk < K
    pos = (kk % 4)[None, :]
    acc = tl.full([BLOCK_A, BLOCK_B], 0, tl.float32)
    for m0 in range(0, M, BLOCK_K):
        offs_m = m0 + tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        dy = tl.load(dy_ptr + offs_n[:, None] * stride_dyn + offs_m[None, :], mask=n_ok[:, None] & m_ok[None, :],
                     other=0)
        wm = m_ok[:, None] & k_ok[None, :]
        meta = tl.load(meta_ptr + offs_m[:, None] * stride_meta + (kk // 4)[None, :], mask=wm, other=0).to(tl.int32)
        first = pos == (meta & 3)
        keep = (first | (pos == ((meta >> 2) & 3))) & wm
        if COMPRESSED:
            col = 2 * (kk // 4)[None, :] + (1 - first.to(tl.int64))
        else:
            col = kk[None, :]
        # Dense: a whole-tile load (vectorised; bounds mask only), dropped entries zeroed after.
        w = tl.load(w_ptr + offs_m[:, None] * stride_wm + col, mask=keep if COMPRESSED else wm, other=0)
        w = tl.where(keep, w, 0)
        if UPCAST:
            dy = dy.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION)
    tl.store(dx_ptr + offs_n[:, None] * stride_dxn + kk[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])


@kernel
def _grad_weight_kernel(dy_ptr, x_ptr, meta_ptr, dw_ptr, N, M, K, stride_dyn, stride_xn, stride_meta, stride_dwm,
                        UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_A: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW[m, k] = sum_n dY[n, m] X[n, k] at kept (m, k), exactly 0 elsewhere; tile (BLOCK_A rows m,
    BLOCK_B columns k), the reduction over n in steps of BLOCK_K."""
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    kk = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    m_ok = offs_m < M
    k_ok = kk < K
    acc = tl.full([BLOCK_A, BLOCK_B], 0, tl.float32)
    for n0 in range(0, N, BLOCK_K):
        offs_n = n0 + tl.arange(0, BLOCK_K)
        n_ok = offs_n < N
        dy = tl.load(dy_ptr + offs_n[:, None] * stride_dyn + offs_m[None, :], mask=n_ok[:, None] & m_ok[None, :],
                     other=0)
        x = tl.load(x_ptr + offs_n[:, None] * stride_xn + kk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        if UPCAST:
            dy = dy.to(tl.float32)
            x = x.to(tl.float32)
        acc = tl.dot(tl.trans(dy), x, acc, input_precision=PRECISION)
    wm = m_ok[:, None] & k_ok[None, :]
    meta = tl.load(meta_ptr + offs_m[:, None] * stride_meta + (kk // 4)[None, :], mask=wm, other=0).to(tl.int32)
    pos = (kk % 4)[None, :]
    keep = (pos == (meta & 3)) | (pos == ((meta >> 2) & 3))
    tl.store(dw_ptr + offs_m[:, None] * stride_dwm + kk[None, :], tl.where(keep, acc, 0).to(dw_ptr.dtype.element_ty),
             mask=wm)


# ---- launching -----------------------------------------------------------------------------------

_tuned: dict = {}


def _launch(k: kernel, name: str, grid_of, args: tuple, constexprs: dict, key: tuple[str, ...]) -> None:
    """Launch `k` with the interpreter's config, or on a GPU through `triton.autotune` over
    `tensor_core_configs()`, keyed on the size arguments named in `key`."""
    if _interpreting():
        a, b, kb, _, _ = CONFIGS[0]
        meta = dict(BLOCK_A=a, BLOCK_B=b, BLOCK_K=kb)
        k[grid_of(meta)](*args, **constexprs, **meta)
        return
    tuned = _tuned.get(name)
    if tuned is None:
        configs = [triton.Config(dict(BLOCK_A=a, BLOCK_B=b, BLOCK_K=kb), num_warps=w, num_stages=s)
                   for a, b, kb, w, s in tensor_core_configs()]
        tuned = _tuned[name] = triton.autotune(configs=configs, key=list(key))(triton.jit(k.fn))
    tuned[grid_of](*args, **constexprs)


def _precision(dtype: torch.dtype) -> str:
    """tf32 for float32 only when torch allows it for matmuls (as cuBLAS would), else IEEE fp32."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _check(t: torch.Tensor, name: str, dims: int, dtype=None) -> None:
    if t.dim() != dims:
        raise RuntimeError(f"{name}: expected {dims} dims, got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise RuntimeError(f"{name}: expected dtype {dtype}, got {t.dtype}")


def _check_operands(a: torch.Tensor, a_name: str, weight: torch.Tensor, meta: torch.Tensor, compressed: bool,
                    k: int) -> None:
    if a.dtype not in DTYPES:
        raise RuntimeError(f"{a_name}: expected float32, float16 or bfloat16, got {a.dtype}")
    _check(weight, "weight", 2, a.dtype)
    _check(meta, "meta", 2, torch.uint8)
    if k % 4:
        raise RuntimeError(f"weight: K ({k}) must be a multiple of 4 for 2:4")
    m = weight.shape[0]
    if tuple(meta.shape) != (m, k // 4):
        raise RuntimeError(f"meta: expected shape ({m}, {k // 4}), got {tuple(meta.shape)}")
    expected_cols = k // 2 if compressed else k
    if weight.shape[1] != expected_cols:
        form = "compressed values" if compressed else "dense"
        raise RuntimeError(f"weight: expected ({m}, {expected_cols}) ({form}),"
                           f" got {tuple(weight.shape)}")
    for t, name in ((weight, "weight"), (meta, "meta")):
        if t.device != a.device:
            raise RuntimeError(f"{name}: expected device {a.device} (that of {a_name}), got {t.device}")


def twofour_linear(input: torch.Tensor, weight: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                   compressed: bool = False) -> torch.Tensor:
    """Y (N, M) = input (N, K) . W^T + bias for a 2:4 W given by `meta` (M, K/4) uint8 and either
    the dense-shaped weight (M, K) or, `compressed`, its values (M, K/2). float32/float16/bfloat16,
    fp32 accumulation. Raises RuntimeError naming the offending argument."""
    _check(input, "input", 2)
    k = input.shape[1]
    _check_operands(input, "input", weight, meta, compressed, k)
    if bias is not None:
        _check(bias, "bias", 1, input.dtype)
        if bias.shape[0] != weight.shape[0]:
            raise RuntimeError(f"bias: expected ({weight.shape[0]},), got {tuple(bias.shape)}")
    require_available(input.device, "twofour_linear")
    n, m = input.shape[0], weight.shape[0]
    out = torch.empty(n, m, dtype=input.dtype, device=input.device)
    if n == 0 or m == 0:
        return out
    if k == 0:
        return out.copy_(bias.expand(n, m)) if bias is not None else out.zero_()
    x, w, meta = input.contiguous(), weight.contiguous(), meta.contiguous()
    _launch(_forward_kernel, "forward", lambda c: (cdiv(n, c["BLOCK_A"]), cdiv(m, c["BLOCK_B"])),
            (x, w, meta, bias if bias is not None else out, out, n, m, k, x.stride(0), w.stride(0), meta.stride(0),
             out.stride(0)),
            dict(HAS_BIAS=bias is not None, COMPRESSED=compressed, UPCAST=_interpreting(),
                 PRECISION=_precision(input.dtype)), ("N", "M", "K"))
    return out


def twofour_linear_grad_input(grad_output: torch.Tensor, weight: torch.Tensor, meta: torch.Tensor,
                              compressed: bool = False) -> torch.Tensor:
    """dX (N, K) = grad_output (N, M) . W for the 2:4 W of `twofour_linear`."""
    _check(grad_output, "grad_output", 2)
    k = 4 * meta.shape[1] if meta.dim() == 2 else -1
    _check_operands(grad_output, "grad_output", weight, meta, compressed, k)
    if grad_output.shape[1] != weight.shape[0]:
        raise RuntimeError(f"grad_output: expected (N, {weight.shape[0]}), got {tuple(grad_output.shape)}")
    require_available(grad_output.device, "twofour_linear_grad_input")
    n, m = grad_output.shape
    out = torch.empty(n, k, dtype=grad_output.dtype, device=grad_output.device)
    if n == 0 or k == 0:
        return out
    if m == 0:
        return out.zero_()
    dy, w, meta = grad_output.contiguous(), weight.contiguous(), meta.contiguous()
    _launch(_grad_input_kernel, "grad_input", lambda c: (cdiv(n, c["BLOCK_A"]), cdiv(k, c["BLOCK_B"])),
            (dy, w, meta, out, n, m, k, dy.stride(0), w.stride(0), meta.stride(0), out.stride(0)),
            dict(COMPRESSED=compressed, UPCAST=_interpreting(), PRECISION=_precision(dy.dtype)), ("N", "M", "K"))
    return out


def twofour_linear_grad_weight(grad_output: torch.Tensor, input: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """dW (M, K) = grad_output^T (M, N) . input (N, K) at the kept positions of `meta`, exactly zero
    elsewhere (dense-shaped, as the op's contract)."""
    _check(grad_output, "grad_output", 2)
    _check(input, "input", 2, grad_output.dtype)
    if grad_output.dtype not in DTYPES:
        raise RuntimeError(f"grad_output: expected float32, float16 or bfloat16, got {grad_output.dtype}")
    _check(meta, "meta", 2, torch.uint8)
    n, m = grad_output.shape
    k = input.shape[1]
    if input.shape[0] != n:
        raise RuntimeError(f"input: expected ({n}, K), got {tuple(input.shape)}")
    if tuple(meta.shape) != (m, k // 4) or k % 4:
        raise RuntimeError(f"meta: expected shape ({m}, {k // 4}) with K ({k}) a multiple of 4, "
                           f"got {tuple(meta.shape)}")
    require_available(input.device, "twofour_linear_grad_weight")
    out = torch.empty(m, k, dtype=input.dtype, device=input.device)
    if m == 0 or k == 0:
        return out
    if n == 0:
        return out.zero_()
    dy, x, meta = grad_output.contiguous(), input.contiguous(), meta.contiguous()
    _launch(_grad_weight_kernel, "grad_weight", lambda c: (cdiv(m, c["BLOCK_A"]), cdiv(k, c["BLOCK_B"])),
            (dy, x, meta, out, n, m, k, dy.stride(0), x.stride(0), meta.stride(0), out.stride(0)),
            dict(UPCAST=_interpreting(), PRECISION=_precision(dy.dtype)), ("N", "M", "K"))
    return out


# ---- references ----------------------------------------------------------------------------------

def _dense_weight(weight: torch.Tensor, meta: torch.Tensor, compressed: bool) -> torch.Tensor:
    from ebsparse.formats.twofour import unpack_2_4_rows

    if compressed:
        return unpack_2_4_rows(weight, meta)
    keep = unpack_2_4_rows(torch.ones(weight.shape[0], weight.shape[1] // 2, dtype=torch.bool,
                                      device=weight.device), meta)
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def twofour_linear_reference(input, weight, meta, bias, compressed: bool = False):
    """Masked dense PyTorch (float32 math, result in input's dtype)."""
    w = _dense_weight(weight, meta, compressed).float()
    y = input.float() @ w.T
    return (y + bias.float() if bias is not None else y).to(input.dtype)


def twofour_linear_grad_input_reference(grad_output, weight, meta, compressed: bool = False):
    return (grad_output.float() @ _dense_weight(weight, meta, compressed).float()).to(grad_output.dtype)


def twofour_linear_grad_weight_reference(grad_output, input, meta):
    from ebsparse.formats.twofour import unpack_2_4_rows

    keep = unpack_2_4_rows(torch.ones(meta.shape[0], 2 * meta.shape[1], dtype=torch.bool, device=meta.device), meta)
    dw = grad_output.float().T @ input.float()
    return torch.where(keep, dw, torch.zeros((), device=dw.device)).to(input.dtype)


