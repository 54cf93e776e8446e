"""Triton 2:4 compress: the two kept values of every group of 4 and their 2-bit positions.

For weight (M, K) and a bool mask keeping exactly 2 of every 4 consecutive entries along K:
values (M, K/2) and meta (M, K/4) uint8, meta = p0 | (p1 << 2) with the kept positions p0 < p1.
Same semantics as `torch.ops.ebsparse.compress_2_4`.
"""

from __future__ import annotations

import torch

from ebsparse.formats.twofour import pack_2_4_rows

from ._common import FLOAT_DTYPES, cdiv, kernel, require_available, tl

BLOCK_G = 256  # groups of 4 per program


@kernel
def _compress_2_4_kernel(w_ptr, mask_ptr, values_ptr, meta_ptr, G, BLOCK_G: tl.constexpr):
    """For every group g: p0 = first kept i, p1 = last kept i (exactly two are kept),
    values[2g] = w[4g + p0], values[2g + 1] = w[4g + p1], meta[g] = p0 | (p1 << 2)."""
    g = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = g < G
    m0 = tl.load(mask_ptr + 4 * g + 0, mask=ok, other=0) != 0
    m1 = tl.load(mask_ptr + 4 * g + 1, mask=ok, other=0) != 0
    m2 = tl.load(mask_ptr + 4 * g + 2, mask=ok, other=0) != 0
    m3 = tl.load(mask_ptr + 4 * g + 3, mask=ok, other=0) != 0
    p0 = tl.where(m0, 0, tl.where(m1, 1, tl.where(m2, 2, 3)))
    p1 = tl.where(m3, 3, tl.where(m2, 2, tl.where(m1, 1, 0)))
    v0 = tl.load(w_ptr + 4 * g + p0, mask=ok, other=0)
    v1 = tl.load(w_ptr + 4 * g + p1, mask=ok, other=0)
    tl.store(values_ptr + 2 * g, v0, mask=ok)
    tl.store(values_ptr + 2 * g + 1, v1, mask=ok)
    tl.store(meta_ptr + g, (p0 | (p1 << 2)).to(tl.uint8), mask=ok)


def compress_2_4(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (M, K/2), meta (M, K/4) uint8) of weight (M, K) at the kept positions of mask.

    weight: a floating-point (M, K) tensor with K a multiple of 4; mask: bool, weight's shape and
    device, exactly 2 kept of every 4 consecutive entries. Raises RuntimeError naming the offending
    argument (a bad mask is reported before anything is written).
    """
    if weight.dim() != 2:
        raise RuntimeError(f"weight: expected (M, K), got {tuple(weight.shape)}")
    if weight.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"weight: expected float32, float64, float16 or bfloat16, got {weight.dtype}")
    if mask.shape != weight.shape or mask.dtype != torch.bool:
        raise RuntimeError(f"mask: expected a bool tensor of shape {tuple(weight.shape)}, "
                           f"got {mask.dtype} {tuple(mask.shape)}")
    if mask.device != weight.device:
        raise RuntimeError(f"mask: expected device {weight.device} (that of weight), got {mask.device}")
    m, k = weight.shape
    if k % 4 != 0:
        raise RuntimeError(f"weight: K ({k}) must be a multiple of 4 for 2:4")
    require_available(weight.device, "compress_2_4")
    values = torch.empty(m, k // 2, dtype=weight.dtype, device=weight.device)
    meta = torch.empty(m, k // 4, dtype=torch.uint8, device=weight.device)
    groups = m * (k // 4)
    if groups == 0:
        return values, meta
    mk = mask.contiguous()
    kept = mk.view(groups, 4).sum(1)
    bad = (kept != 2).nonzero()
    if bad.numel():
        g = int(bad[0, 0])
        raise RuntimeError(f"mask: expected exactly 2 kept of every 4 consecutive entries, group {g} "
                           f"(row {g // (k // 4)}) keeps {int(kept[g])}")
    _compress_2_4_kernel[(cdiv(groups, BLOCK_G),)](weight.contiguous(), mk.view(torch.uint8), values, meta,
                                                   groups, BLOCK_G=BLOCK_G)
    return values, meta


def compress_2_4_reference(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch: the library's one 2:4 packing (ebsparse.formats.twofour)."""
    return pack_2_4_rows(weight, mask)
