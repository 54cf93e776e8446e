"""Pure-PyTorch references: masked dense computation, the oracle every backend is tested against
(kept independent of the backends on purpose)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ebsparse.formats.twofour import check_2_4_shape, from_rows_view, magnitude_2_4_rows, rows_view


def _masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def sparse_linear_reference(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            mask: torch.Tensor) -> torch.Tensor:
    """y = input @ where(mask, weight, 0).T + bias; autograd gives the masked weight gradient."""
    return F.linear(input, _masked(weight, mask), bias)


def sparse_conv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            mask: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """conv2d(input, where(mask, weight, 0)) + bias with groups = 1."""
    return F.conv2d(input, _masked(weight, mask), bias, stride, padding, dilation)


def prune_2_4_reference(weight: torch.Tensor) -> torch.Tensor:
    """Mask of the 2 largest |w| in every 4 consecutive along the input dim (ties: lower index)."""
    check_2_4_shape(weight.shape)
    return from_rows_view(magnitude_2_4_rows(rows_view(weight)), weight.shape)


def group_norm_silu_reference(input: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                              bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """silu(group_norm(input)), ATen's two ops."""
    return F.silu(F.group_norm(input, num_groups, weight, bias, eps))


def layer_norm_modulate_reference(input: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                  eps: float = 1e-6) -> torch.Tensor:
    """DiT's adaLN modulate of an affine-free LayerNorm: LN(input) * (1 + scale[:, None]) + shift[:, None]."""
    return F.layer_norm(input, input.shape[-1:], eps=eps) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def gated_residual_reference(input: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """DiT's adaLN-Zero gated residual: input + gate[:, None] * branch."""
    return input + gate.unsqueeze(1) * branch


def block_sparse_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                     layout: torch.Tensor, block_size: int, scale: float | None = None) -> torch.Tensor:
    """``softmax(scale * Q K^T + M) V`` with ``M`` the layout's dense mask (0 kept, -inf dropped), the
    plain math (no SDPA); rows with no kept key give 0. q/k/v (B, H, N, D); layout (nq, nk) or
    (H, nq, nk) bool blocks of ``block_size`` tokens."""
    from ebsparse.formats.block_layout import dense_mask

    n, d = query.shape[-2], query.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    lay = layout if layout.ndim == 3 else layout.unsqueeze(0)
    mask = dense_mask(lay.to(query.device), n, n, block_size).unsqueeze(0)  # (1, H or 1, N, N)
    live = mask.any(-1, keepdim=True)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~live, 0.0)
    return torch.matmul(torch.softmax(scores, dim=-1) * live, value)


def qkv_attention_reference(qkv: torch.Tensor, num_heads: int, scale: float | None = None) -> torch.Tensor:
    """Multi-head ``softmax(scale * Q K^T) V`` on a fused qkv (B, N, 3 * H * D), the plain math (no
    SDPA): (B, N, H * D), head h in columns h*D:(h+1)*D."""
    b, n, width = qkv.shape
    d = width // (3 * num_heads)
    q, k, v = qkv.reshape(b, n, 3, num_heads, d).permute(2, 0, 3, 1, 4)  # each (B, H, N, D)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (d ** -0.5 if scale is None else scale)
    return torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).reshape(b, n, num_heads * d)
