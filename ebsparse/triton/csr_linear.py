"""Triton CSR SpMM forward of the sparse linear: Y (N, M) = X (N, K) . (W o mask)^T + bias.

The weight W is the dense-shaped (M, K) matrix, read in place at the kept positions of the CSR
(row_ptr, col_idx); nothing is read at the other positions. Same semantics as
`torch.ops.ebsparse.csr_linear`.
"""

from __future__ import annotations

import torch

from ._common import (acc_dtype, cdiv, check_float, check_pattern, check_same, kernel, pattern_mask,
                      SUM, require_available, tl)

# Rows of the output (over n) and kept entries handled per step of one program.
BLOCK_N = 64
BLOCK_J = 32
# CUDA limits grid axes 1 and 2 to 65535 programs; the kernel loops over the n-blocks beyond that.
MAX_GRID_AXIS_1 = 65535


@kernel
def _row_gather_spmm_kernel(in_ptr, w_ptr, bias_ptr, ptr_ptr, idx_ptr, out_ptr, N,
                            stride_in_n, stride_in_i, stride_out_n, stride_out_r,
                            w_row_stride, w_idx_stride,
                            HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr):
    """out[n, r] = bias[r] + sum_{ptr[r] <= j < ptr[r+1]} W[r * w_row_stride + idx[j] * w_idx_stride]
                                                         * in[n, idx[j]]

    One program per output column r (axis 0) and block of BLOCK_N rows n (axis 1, looping when the
    grid is capped). forward: r = m over the CSR, in = X; grad_input: r = k over the CSC, in = dY.
    """
    r = tl.program_id(0).to(tl.int64)
    begin = tl.load(ptr_ptr + r)
    end = tl.load(ptr_ptr + r + 1)
    for nb in range(tl.program_id(1), (N + BLOCK_N - 1) // BLOCK_N, tl.num_programs(1)):
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        n_ok = offs_n < N
        acc = tl.full([BLOCK_N], 0, ACC_DTYPE)
        for j0 in range(begin, end, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            j_ok = offs_j < end
            i = tl.load(idx_ptr + offs_j, mask=j_ok, other=0).to(tl.int64)
            w = tl.load(w_ptr + r * w_row_stride + i * w_idx_stride, mask=j_ok, other=0).to(ACC_DTYPE)
            v = tl.load(in_ptr + offs_n[:, None] * stride_in_n + i[None, :] * stride_in_i,
                        mask=n_ok[:, None] & j_ok[None, :], other=0).to(ACC_DTYPE)
            acc += tl.reduce(v * w[None, :], 1, SUM)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + r).to(ACC_DTYPE)
        tl.store(out_ptr + offs_n * stride_out_n + r * stride_out_r,
                 acc.to(out_ptr.dtype.element_ty), mask=n_ok)


def row_gather_spmm(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    ptr: torch.Tensor, idx: torch.Tensor, rows: int, w_row_stride: int,
                    w_idx_stride: int) -> torch.Tensor:
    """Launches `_row_gather_spmm_kernel` over `rows` output columns; returns out (N, rows)."""
    n = inp.shape[0]
    out = torch.empty(n, rows, dtype=inp.dtype, device=inp.device)
    if n == 0 or rows == 0:
        return out
    grid = (rows, min(cdiv(n, BLOCK_N), MAX_GRID_AXIS_1))
    _row_gather_spmm_kernel[grid](
        inp, weight, bias if bias is not None else out, ptr, idx, out, n,
        inp.stride(0), inp.stride(1), out.stride(0), out.stride(1), w_row_stride, w_idx_stride,
        HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype(inp.dtype), BLOCK_N=BLOCK_N, BLOCK_J=BLOCK_J)
    return out


def csr_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               row_ptr: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
    """Y (N, M) = input (N, K) . (weight o mask)^T + bias (M,), mask given by the CSR.

    input, weight (M, K), bias: float32/float64/float16/bfloat16, one dtype and device;
    row_ptr (M + 1,), col_idx (nnz,): contiguous int32. Accumulates in float32 (float64 for
    float64). Raises RuntimeError naming the offending argument.
    """
    check_float(input, "input")
    check_same(input, weight, "input", "weight")
    if input.dim() != 2:
        raise RuntimeError(f"input: expected (N, K), got {tuple(input.shape)}")
    if weight.dim() != 2 or weight.shape[1] != input.shape[1]:
        raise RuntimeError(f"weight: expected (M, {input.shape[1]}), got {tuple(weight.shape)}")
    check_pattern(row_ptr, col_idx, weight.shape[0], "row_ptr", "col_idx", input, weight.shape[1])
    if bias is not None:
        check_same(input, bias, "input", "bias")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise RuntimeError(f"bias: expected ({weight.shape[0]},), got {tuple(bias.shape)}")
    require_available(input.device, "csr_linear")
    m, k = weight.shape
    return row_gather_spmm(input.contiguous(), weight.contiguous(),
                           bias.contiguous() if bias is not None else None, row_ptr, col_idx, m,
                           w_row_stride=k, w_idx_stride=1)


def csr_linear_reference(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         row_ptr: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
    """Masked dense PyTorch: input . where(mask, weight, 0)^T + bias."""
    mask = pattern_mask(row_ptr, col_idx, *weight.shape)
    y = input @ torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device)).T
    return y + bias if bias is not None else y
