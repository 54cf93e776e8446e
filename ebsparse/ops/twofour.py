"""2:4 magnitude prune, compress and decompress (native kernels when built, else the reference).

Linear weights (M, K) group along K; conv weights (Co, Ci, KH, KW) group along Ci for each
(co, kh, kw), handled here by moving Ci last so the kernels only ever see (rows, K) matrices.
"""

from __future__ import annotations

import torch

from ebsparse.formats.twofour import check_2_4_mask, check_2_4_shape
from ebsparse.ops.checks import check_tensor
from ebsparse.ops.extension import extension_error
from ebsparse.ops.reference import prune_2_4_reference


def _rows_view(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 2 else t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _native(t: torch.Tensor) -> bool:
    if extension_error() is not None:
        return False
    key = "CUDA" if t.is_cuda else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key("ebsparse::prune_2_4", key)


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest |w| of every 4 consecutive weights along the input dim."""
    check_tensor(weight, "weight", floating=True)
    check_2_4_shape(weight.shape)
    if not _native(weight):
        return prune_2_4_reference(weight)
    mask = torch.ops.ebsparse.prune_2_4(_rows_view(weight.detach()))
    if weight.dim() == 2:
        return mask.view(weight.shape)
    co, ci, kh, kw = weight.shape
    return mask.reshape(co, kh, kw, ci).permute(0, 3, 1, 2).contiguous()


def compress_2_4(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta): values (rows, K/2) of the kept weights, meta (rows, K/4) uint8 whose bits
    0-1 and 2-3 give the two kept positions of each group. rows = M, or Co*KH*KW for conv."""
    check_tensor(weight, "weight", floating=True)
    check_2_4_mask(mask)
    if mask.shape != weight.shape:
        raise ValueError(f"mask: expected shape {tuple(weight.shape)} (that of weight), got {tuple(mask.shape)}")
    w2, m2 = _rows_view(weight.detach()), _rows_view(mask)
    if _native(weight):
        return torch.ops.ebsparse.compress_2_4(w2.contiguous(), m2.contiguous())
    groups_w, groups_m = w2.reshape(w2.shape[0], -1, 4), m2.reshape(m2.shape[0], -1, 4)
    pos = torch.sort(groups_m.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :2]
    pos = pos.sort(dim=-1).values
    values = groups_w.gather(-1, pos).reshape(w2.shape[0], -1)
    meta = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.uint8)
    return values.contiguous(), meta.contiguous()


def decompress_2_4(values: torch.Tensor, meta: torch.Tensor, shape=None) -> torch.Tensor:
    """Inverse of `compress_2_4`; `shape` (the original weight shape) restores a conv layout."""
    check_tensor(values, "values", dims=2, floating=True)
    check_tensor(meta, "meta", dims=2)
    if meta.dtype != torch.uint8 or meta.shape[0] != values.shape[0] or 2 * meta.shape[1] != values.shape[1]:
        raise ValueError(f"meta: expected uint8 of shape ({values.shape[0]}, {values.shape[1] // 2}), "
                         f"got {meta.dtype} {tuple(meta.shape)}")
    if _native(values):
        dense = torch.ops.ebsparse.decompress_2_4(values, meta)
    else:
        first, second = (meta & 3).long(), ((meta >> 2) & 3).long()
        if bool(((first >= second) | (meta >> 4 != 0)).any()):
            raise ValueError("meta: not valid 2:4 codes (two increasing 2-bit positions per group)")
        groups = torch.zeros(values.shape[0], meta.shape[1], 4, dtype=values.dtype, device=values.device)
        pairs = values.reshape(values.shape[0], -1, 2)
        groups.scatter_(-1, torch.stack([first, second], -1), pairs)
        dense = groups.reshape(values.shape[0], -1)
    if shape is None or len(shape) == 2:
        return dense if shape is None else dense.reshape(shape)
    co, ci, kh, kw = shape
    return dense.reshape(co, kh, kw, ci).permute(0, 3, 1, 2).contiguous()
