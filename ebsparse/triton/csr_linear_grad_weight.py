"""Triton grad-weight of the sparse linear: SDDMM at the kept positions only.

dW (M, K): dW[m, k] = sum_n dY[n, m] * X[n, k] at every kept (m, k) of the CSR, exactly zero
elsewhere. Same semantics as `torch.ops.ebsparse.csr_linear_grad_weight`.
"""

from __future__ import annotations

import torch

from ._common import (acc_dtype, check_float, check_pattern, check_same, kernel, pattern_mask,
                      SUM, require_available, tl)

BLOCK_J = 32
BLOCK_N = 64


@kernel
def _sddmm_kept_kernel(dy_ptr, x_ptr, row_ptr, col_idx, dw_ptr, N, M, K,
                       ACC_DTYPE: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr):
    """dW[m, col_idx[j]] = sum_n dY[n, m] * X[n, col_idx[j]]  for row_ptr[m] <= j < row_ptr[m+1].

    One program per row m (dY, X, dW contiguous): BLOCK_J kept entries at a time, each a dot
    product over n in steps of BLOCK_N.
    """
    m = tl.program_id(0).to(tl.int64)
    begin = tl.load(row_ptr + m)
    end = tl.load(row_ptr + m + 1)
    for j0 in range(begin, end, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        j_ok = offs_j < end
        k = tl.load(col_idx + offs_j, mask=j_ok, other=0).to(tl.int64)
        acc = tl.full([BLOCK_J], 0, ACC_DTYPE)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
            n_ok = offs_n < N
            dy = tl.load(dy_ptr + offs_n * M + m, mask=n_ok, other=0).to(ACC_DTYPE)
            x = tl.load(x_ptr + offs_n[:, None] * K + k[None, :],
                        mask=n_ok[:, None] & j_ok[None, :], other=0).to(ACC_DTYPE)
            acc += tl.reduce(dy[:, None] * x, 0, SUM)
        tl.store(dw_ptr + m * K + k, acc.to(dw_ptr.dtype.element_ty), mask=j_ok)


def csr_linear_grad_weight(grad_output: torch.Tensor, input: torch.Tensor, row_ptr: torch.Tensor,
                           col_idx: torch.Tensor) -> torch.Tensor:
    """dW (M, K) from grad_output (N, M) and input (N, K) at the kept positions of the CSR
    (row_ptr (M + 1,), col_idx (nnz,), contiguous int32); zero elsewhere. Raises RuntimeError
    naming the offending argument."""
    check_float(grad_output, "grad_output")
    check_same(grad_output, input, "grad_output", "input")
    if grad_output.dim() != 2 or input.dim() != 2 or grad_output.shape[0] != input.shape[0]:
        rows = grad_output.shape[0] if grad_output.dim() >= 1 else "N"
        raise RuntimeError(f"input: expected ({rows}, K), got {tuple(input.shape)}")
    check_pattern(row_ptr, col_idx, grad_output.shape[1], "row_ptr", "col_idx", input, input.shape[1])
    require_available(input.device, "csr_linear_grad_weight")
    n, k = input.shape
    m = grad_output.shape[1]
    dw = torch.zeros(m, k, dtype=input.dtype, device=input.device)
    if m == 0 or k == 0 or col_idx.numel() == 0:
        return dw
    _sddmm_kept_kernel[(m,)](grad_output.contiguous(), input.contiguous(), row_ptr, col_idx, dw, n, m, k,
                             ACC_DTYPE=acc_dtype(input.dtype), BLOCK_J=BLOCK_J, BLOCK_N=BLOCK_N)
    return dw


def csr_linear_grad_weight_reference(grad_output: torch.Tensor, input: torch.Tensor,
                                     row_ptr: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
    """Masked dense PyTorch: where(mask, grad_output^T . input, 0)."""
    mask = pattern_mask(row_ptr, col_idx, grad_output.shape[1], input.shape[1])
    return torch.where(mask, grad_output.T @ input, torch.zeros((), dtype=input.dtype, device=input.device))
