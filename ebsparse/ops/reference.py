"""Pure-PyTorch references: masked dense computation, the oracle every backend is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparse_linear_reference(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            mask: torch.Tensor) -> torch.Tensor:
    """y = input @ (weight * mask).T + bias; autograd gives the masked weight gradient."""
    return F.linear(input, weight * mask, bias)


def sparse_conv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            mask: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """conv2d(input, weight * mask) + bias with groups = 1."""
    return F.conv2d(input, weight * mask, bias, stride, padding, dilation)


def prune_2_4_reference(weight: torch.Tensor) -> torch.Tensor:
    """Mask of the 2 largest |w| in every 4 consecutive along the input dim (ties: lower index)."""
    from ebsparse.formats.twofour import check_2_4_shape, groups_view

    check_2_4_shape(weight.shape)
    groups = groups_view(weight.detach().abs().float())
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :2]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    if weight.dim() == 2:
        return mask.reshape(weight.shape)
    co, ci, kh, kw = weight.shape
    return mask.reshape(co, kh, kw, ci).permute(0, 3, 1, 2).contiguous()
