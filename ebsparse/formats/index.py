"""CSR and CSC index of a weight mask, the layout every native sparse kernel reads.

The weight is viewed as a matrix (M, K): (out_features, in_features) for linear layers and
(out_channels, in_channels * kh * kw) for convolutions. Kernels read the dense-shaped weight in
place at the listed positions, so the index changes only when the mask does (every ΔT steps under
RigL, never under static sparsity) and is built once per mask version, not per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatternIndex:
    """CSR (row_ptr, col_idx) and CSC (col_ptr, row_idx) of a 2-D mask, all int32."""

    rows: int
    cols: int
    row_ptr: torch.Tensor  # (rows + 1,)
    col_idx: torch.Tensor  # (nnz,), sorted within each row
    col_ptr: torch.Tensor  # (cols + 1,)
    row_idx: torch.Tensor  # (nnz,), sorted within each column

    @property
    def nnz(self) -> int:
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.rows * self.cols)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.row_ptr, self.col_idx, self.col_ptr, self.row_idx


def _compressed(mask2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    counts = mask2d.sum(dim=1, dtype=torch.int64)
    ptr = torch.zeros(mask2d.shape[0] + 1, dtype=torch.int64, device=mask2d.device)
    torch.cumsum(counts, dim=0, out=ptr[1:])
    # nonzero() lists positions in row-major order, so columns come out sorted within each row.
    idx = mask2d.nonzero()[:, 1]
    return ptr.to(torch.int32), idx.to(torch.int32).contiguous()


def build_index(mask: torch.Tensor) -> PatternIndex:
    """Index of `mask` (bool, shape (M, ...)) viewed as (M, prod(rest))."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got {mask.dtype}")
    if mask.dim() < 2:
        raise ValueError(f"mask: expected at least 2 dims (out, in, ...), got shape {tuple(mask.shape)}")
    if mask.numel() >= 2**31:
        raise ValueError(f"mask: {mask.numel()} entries exceed the int32 index range")
    mask2d = mask.reshape(mask.shape[0], -1)
    row_ptr, col_idx = _compressed(mask2d)
    col_ptr, row_idx = _compressed(mask2d.t())
    return PatternIndex(mask2d.shape[0], mask2d.shape[1], row_ptr, col_idx, col_ptr, row_idx)
