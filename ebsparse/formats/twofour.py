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
