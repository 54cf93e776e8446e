"""Triton 2:4 decompress: back to the dense (M, K) layout with zeros at the dropped positions.

out[m, 4g + p0] = values[m, 2g], out[m, 4g + p1] = values[m, 2g + 1], 0 elsewhere, with
p0 = meta[m, g] & 3 and p1 = (meta[m, g] >> 2) & 3. Same semantics as
`torch.ops.ebsparse.decompress_2_4`.
"""

from __future__ import annotations

import torch

from ebsparse.formats.twofour import unpack_2_4_rows

from ._common import FLOAT_DTYPES, cdiv, kernel, require_available, tl

BLOCK_G = 256  # groups of 4 per program


@kernel
def _decompress_2_4_kernel(values_ptr, meta_ptr, out_ptr, G, BLOCK_G: tl.constexpr):
    """For every group g: out[4g + i] = values[2g] if i == p0, values[2g + 1] if i == p1, else 0."""
    g = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = g < G
    code = tl.load(meta_ptr + g, mask=ok, other=0).to(tl.int32)
    p0 = code & 3
    p1 = (code >> 2) & 3
    v0 = tl.load(values_ptr + 2 * g, mask=ok, other=0)
    v1 = tl.load(values_ptr + 2 * g + 1, mask=ok, other=0)
    zero = tl.full([BLOCK_G], 0, v0.dtype)
    for i in tl.static_range(4):
        tl.store(out_ptr + 4 * g + i, tl.where(p0 == i, v0, tl.where(p1 == i, v1, zero)), mask=ok)


def _check_meta_codes(meta: torch.Tensor) -> None:
    """A valid code holds two increasing 2-bit positions and nothing above bit 3."""
    flat = meta.reshape(-1)
    bad = (((flat & 3) >= ((flat >> 2) & 3)) | ((flat >> 4) != 0)).nonzero()
    if bad.numel():
        g = int(bad[0, 0])
        raise RuntimeError(f"meta: entry {g} ({int(flat[g])}) is not a valid 2:4 code "
                           "(two increasing 2-bit positions)")


def _check_args(values: torch.Tensor, meta: torch.Tensor) -> None:
    if values.dim() != 2:
        raise RuntimeError(f"values: expected (M, K/2), got {tuple(values.shape)}")
    if values.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"values: expected float32, float64, float16 or bfloat16, got {values.dtype}")
    if (meta.dim() != 2 or meta.dtype != torch.uint8 or meta.shape[0] != values.shape[0]
            or meta.shape[1] * 2 != values.shape[1]):
        raise RuntimeError(f"meta: expected a uint8 tensor of shape ({values.shape[0]}, {values.shape[1] // 2}), "
                           f"got {meta.dtype} {tuple(meta.shape)}")
    if meta.device != values.device:
        raise RuntimeError(f"meta: expected device {values.device} (that of values), got {meta.device}")
    _check_meta_codes(meta)


def decompress_2_4(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense (M, K) from values (M, K/2) and meta (M, K/4) uint8 as made by `compress_2_4`.

    Raises RuntimeError naming the offending argument, including for an invalid meta code.
    """
    _check_args(values, meta)
    require_available(values.device, "decompress_2_4")
    m, groups_per_row = meta.shape
    out = torch.empty(m, 4 * groups_per_row, dtype=values.dtype, device=values.device)
    groups = m * groups_per_row
    if groups == 0:
        return out
    _decompress_2_4_kernel[(cdiv(groups, BLOCK_G),)](values.contiguous(), meta.contiguous(), out, groups,
                                                     BLOCK_G=BLOCK_G)
    return out


def decompress_2_4_reference(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """PyTorch: the library's one 2:4 unpacking (ebsparse.formats.twofour)."""
    return unpack_2_4_rows(values, meta)
