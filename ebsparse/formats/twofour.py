"""2:4 semi-structured patterns: 2 kept of every 4 consecutive weights along the input dimension.

For linear weights (out, in) the groups run along `in`; for conv weights (out, in, kh, kw) they run
along input channels for each (out, kh, kw), so `in_channels % 4 == 0` is required.
"""

from __future__ import annotations

import torch


def groups_view(t: torch.Tensor) -> torch.Tensor:
    """View a linear (M, K) or conv (Co, Ci, KH, KW) tensor as (..., 4) groups along the input dim."""
    if t.dim() == 2:
        return t.reshape(t.shape[0], t.shape[1] // 4, 4)
    if t.dim() == 4:
        # Bring input channels last so consecutive channels of one (out, kh, kw) form a group.
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], t.shape[2], t.shape[3], t.shape[1] // 4, 4)
    raise ValueError(f"expected a linear (out, in) or conv (out, in, kh, kw) tensor, got shape {tuple(t.shape)}")


def check_2_4_shape(shape, name: str = "weight") -> None:
    shape = tuple(shape)
    if len(shape) not in (2, 4):
        raise ValueError(f"{name}: 2:4 needs a linear (out, in) or conv (out, in, kh, kw) weight, got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name}: 2:4 needs a non-empty weight, got shape {shape}")
    if shape[1] % 4:
        what = "in_features" if len(shape) == 2 else "in_channels"
        raise ValueError(f"{name}: 2:4 needs {what} % 4 == 0, got {what} = {shape[1]}")


def is_2_4_mask(mask: torch.Tensor) -> bool:
    """True when every group of 4 along the input dimension keeps exactly 2."""
    try:
        check_2_4_shape(mask.shape, "mask")
    except ValueError:
        return False
    return bool((groups_view(mask).sum(-1) == 2).all())


def check_2_4_mask(mask: torch.Tensor, name: str = "mask") -> None:
    check_2_4_shape(mask.shape, name)
    counts = groups_view(mask).sum(-1)
    bad = (counts != 2).nonzero()
    if bad.numel():
        raise ValueError(f"{name}: not a 2:4 pattern: group {tuple(bad[0].tolist())} keeps "
                         f"{int(counts[tuple(bad[0])])} of 4 (expected 2)")


def rows_view(t: torch.Tensor) -> torch.Tensor:
    """A linear (M, K) or conv (Co, Ci, KH, KW) tensor as the (rows, K) matrix whose consecutive
    entries form the 2:4 groups: itself, or (Co*KH*KW, Ci) with input channels last."""
    return t if t.dim() == 2 else t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def from_rows_view(rows: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of `rows_view` for a tensor of the original `shape`."""
    if len(shape) == 2:
        return rows.reshape(tuple(shape))
    co, ci, kh, kw = shape
    return rows.reshape(co, kh, kw, ci).permute(0, 3, 1, 2).contiguous()


def magnitude_2_4_rows(rows: torch.Tensor) -> torch.Tensor:
    """Mask of the 2 largest |w| in every 4 consecutive entries of each row (ties: lower index)."""
    groups = rows.detach().abs().float().reshape(rows.shape[0], rows.shape[1] // 4, 4)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :2]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True).reshape(rows.shape)


def pack_2_4_rows(rows: torch.Tensor, mask_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (M, K/2), meta (M, K/4) uint8) of a (M, K) matrix at the kept positions of a 2:4 mask:
    meta = p0 | (p1 << 2), the kept positions p0 < p1 of each group."""
    shape = (rows.shape[0], rows.shape[1] // 4, 4)
    groups_w, groups_m = rows.reshape(shape), mask_rows.reshape(shape)
    pos = torch.sort(groups_m.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :2]
    pos = pos.sort(dim=-1).values
    values = groups_w.gather(-1, pos).reshape(rows.shape[0], rows.shape[1] // 2)
    meta = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.uint8)
    return values.contiguous(), meta.contiguous()


def unpack_2_4_rows(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_2_4_rows`: the dense (M, K) matrix with zeros at the dropped positions.
    Raises ValueError for a meta code that is not two increasing 2-bit positions."""
    first, second = (meta & 3).long(), ((meta >> 2) & 3).long()
    if bool(((first >= second) | (meta >> 4 != 0)).any()):
        raise ValueError("meta: not valid 2:4 codes (two increasing 2-bit positions per group)")
    groups = torch.zeros(values.shape[0], meta.shape[1], 4, dtype=values.dtype, device=values.device)
    groups.scatter_(-1, torch.stack([first, second], -1), values.reshape(values.shape[0], meta.shape[1], 2))
    return groups.reshape(values.shape[0], 4 * meta.shape[1])
