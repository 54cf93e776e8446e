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
