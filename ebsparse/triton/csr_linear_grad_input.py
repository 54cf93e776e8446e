"""Triton grad-input of the sparse linear: dX (N, K) = dY (N, M) . (W o mask), through the CSC.

dX[n, k] = sum_{col_ptr[k] <= j < col_ptr[k+1]} W[row_idx[j], k] * dY[n, row_idx[j]]: the forward's
row-gather kernel run over the columns of W. Same semantics as
`torch.ops.ebsparse.csr_linear_grad_input`.
"""

from __future__ import annotations

import torch

from ._common import check_float, check_pattern, check_same, pattern_mask, require_available
from .csr_linear import row_gather_spmm


def csr_linear_grad_input(grad_output: torch.Tensor, weight: torch.Tensor, col_ptr: torch.Tensor,
                          row_idx: torch.Tensor) -> torch.Tensor:
    """dX (N, K) = grad_output (N, M) . (weight o mask), mask given by the CSC of weight (M, K).

    col_ptr (K + 1,), row_idx (nnz,): contiguous int32. Raises RuntimeError naming the offending
    argument.
    """
    check_float(grad_output, "grad_output")
    check_same(grad_output, weight, "grad_output", "weight")
    if grad_output.dim() != 2 or weight.dim() != 2 or grad_output.shape[1] != weight.shape[0]:
        rows = weight.shape[0] if weight.dim() >= 1 else "M"
        raise RuntimeError(f"grad_output: expected (N, {rows}), got {tuple(grad_output.shape)}")
    check_pattern(col_ptr, row_idx, weight.shape[1], "col_ptr", "row_idx", weight, weight.shape[0])
    require_available(grad_output.device, "csr_linear_grad_input")
    k = weight.shape[1]
    return row_gather_spmm(grad_output.contiguous(), weight.contiguous(), None, col_ptr, row_idx, k,
                           w_row_stride=1, w_idx_stride=k)


def csr_linear_grad_input_reference(grad_output: torch.Tensor, weight: torch.Tensor,
                                    col_ptr: torch.Tensor, row_idx: torch.Tensor) -> torch.Tensor:
    """Masked dense PyTorch: grad_output . where(mask, weight, 0)."""
    mask = pattern_mask(col_ptr, row_idx, weight.shape[1], weight.shape[0]).T
    return grad_output @ torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
