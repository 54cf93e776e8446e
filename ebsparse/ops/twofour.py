"""2:4 magnitude prune, compress and decompress, dispatched like every op (`backend=`: a registered
name, or "auto"/None for the first usable backend with kernels, dense last).

Linear weights (M, K) group along K; conv weights (Co, Ci, KH, KW) group along Ci for each
(co, kh, kw), handled here by moving Ci last so the kernels only ever see (rows, K) matrices.
"""

from __future__ import annotations

import torch

from ebsparse.backends import dispatch, registry
from ebsparse.formats.twofour import check_2_4_mask, check_2_4_shape, from_rows_view, rows_view
from ebsparse.ops.checks import check_tensor


def _backend(op: str, backend: str | None, t: torch.Tensor):
    chosen = dispatch.resolve_untimed(backend, op, t.device, t.dtype)
    if registry.executed is not None:
        registry.executed.append((op, "2:4", chosen.name))
    return chosen


def prune_2_4(weight: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Bool mask keeping the 2 largest |w| of every 4 consecutive weights along the input dim
    (ties: the lower index). weight: linear (M, K) or conv (Co, Ci, KH, KW) with K or Ci % 4 == 0."""
    check_tensor(weight, "weight", floating=True)
    check_2_4_shape(weight.shape)
    rows = rows_view(weight.detach())
    return from_rows_view(_backend("prune_2_4", backend, weight).prune_2_4(rows), weight.shape)


def compress_2_4(weight: torch.Tensor, mask: torch.Tensor, *,
                 backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta): values (rows, K/2) of the kept weights, meta (rows, K/4) uint8 whose bits
    0-1 and 2-3 give the two kept positions of each group. rows = M, or Co*KH*KW for conv."""
    check_tensor(weight, "weight", floating=True)
    check_2_4_mask(mask)
    if mask.shape != weight.shape:
        raise ValueError(f"mask: expected shape {tuple(weight.shape)} (that of weight), got {tuple(mask.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"mask: expected device {weight.device} (that of weight), got {mask.device}")
    chosen = _backend("compress_2_4", backend, weight)
    return chosen.compress_2_4(rows_view(weight.detach()), rows_view(mask))


def decompress_2_4(values: torch.Tensor, meta: torch.Tensor, shape=None, *,
                   backend: str | None = None) -> torch.Tensor:
    """Inverse of `compress_2_4`; `shape` (the original weight shape) restores a conv layout."""
    check_tensor(values, "values", dims=2, floating=True)
    check_tensor(meta, "meta", dims=2)
    if meta.dtype != torch.uint8 or meta.shape[0] != values.shape[0] or 2 * meta.shape[1] != values.shape[1]:
        raise ValueError(f"meta: expected uint8 of shape ({values.shape[0]}, {values.shape[1] // 2}), "
                         f"got {meta.dtype} {tuple(meta.shape)}")
    if meta.device != values.device:
        raise ValueError(f"meta: expected device {values.device} (that of values), got {meta.device}")
    dense = _backend("decompress_2_4", backend, values).decompress_2_4(values, meta)
    return dense if shape is None else from_rows_view(dense, tuple(shape))
