"""Block-sparse attention layouts as data: which key blocks each query block attends to.

A layout is a bool tensor ``(num_q_blocks, num_k_blocks)`` shared by all heads, or
``(heads, num_q_blocks, num_k_blocks)`` per head; ``True`` = the block is computed. Tokens
``[i * block_size, (i + 1) * block_size)`` form block ``i`` (the last block may be shorter).
:func:`layout_csr` turns it into the kernels' form: per layout head, a CSR of kept key blocks per
query block (int32 ``crow`` (heads, num_q_blocks + 1), offsets into one ``col`` of increasing block
columns per row).
"""

from __future__ import annotations

import torch

__all__ = ["local_layout", "strided_layout", "check_layout", "layout_csr", "dense_mask", "num_blocks"]


def num_blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def local_layout(blocks: int, window: int) -> torch.Tensor:
    """Each query block sees the key blocks within ``window`` blocks of it (``|i - j| <= window``;
    ``window=0`` is the block diagonal). Raises ValueError for ``blocks < 1`` or ``window < 0``."""
    if blocks < 1 or window < 0:
        raise ValueError(f"local_layout(blocks={blocks}, window={window}): need blocks >= 1 and window >= 0")
    i = torch.arange(blocks)
    return (i[:, None] - i[None, :]).abs() <= window


def strided_layout(blocks: int, stride: int, window: int = 0) -> torch.Tensor:
    """Sparse-Transformer "strided" layout: the local window plus every ``stride``-th key block
    (``j % stride == stride - 1``, the summary blocks). Raises ValueError for ``stride < 1``."""
    if stride < 1:
        raise ValueError(f"strided_layout(stride={stride}): need stride >= 1")
    j = torch.arange(blocks)
    return local_layout(blocks, window) | (j % stride == stride - 1)[None, :]


def check_layout(layout: torch.Tensor, heads: int, q_blocks: int, k_blocks: int) -> torch.Tensor:
    """``layout`` as a (layout heads, q_blocks, k_blocks) bool CPU tensor; raises ValueError naming
    the expectation when it does not fit ``heads`` heads of ``q_blocks`` x ``k_blocks`` blocks."""
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool:
        raise ValueError(f"layout: expected a bool tensor, got {getattr(layout, 'dtype', type(layout).__name__)}")
    lay = layout if layout.ndim == 3 else layout.unsqueeze(0)
    if lay.ndim != 3 or lay.shape[1:] != (q_blocks, k_blocks) or lay.shape[0] not in (1, heads):
        raise ValueError(f"layout: expected ({q_blocks}, {k_blocks}) or ({heads}, {q_blocks}, {k_blocks}) "
                         f"blocks, got {tuple(layout.shape)}")
    return lay.cpu()


def layout_csr(layout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(crow, col)`` int32 of a (layout heads, q_blocks, k_blocks) bool layout (see module doc)."""
    heads, qb, _ = layout.shape
    counts = layout.sum(-1).reshape(-1).to(torch.int64)
    offsets = torch.zeros(heads * qb + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    crow = torch.empty(heads, qb + 1, dtype=torch.int32)
    starts = offsets[:-1].view(heads, qb)
    crow[:, :qb] = starts.to(torch.int32)
    crow[:, qb] = offsets[1:].view(heads, qb)[:, -1].to(torch.int32)
    col = torch.nonzero(layout.reshape(heads * qb, -1))[:, 1].to(torch.int32).contiguous()
    return crow.contiguous(), col


def dense_mask(layout: torch.Tensor, tokens_q: int, tokens_k: int, block_size: int) -> torch.Tensor:
    """The token-level bool mask ``(layout heads, tokens_q, tokens_k)`` a layout stands for."""
    m = layout.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)
    return m[..., :tokens_q, :tokens_k]
