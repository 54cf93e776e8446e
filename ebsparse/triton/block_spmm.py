"""Triton block-sparse SpMM: out = S . im2col(x) (+ bias) with S in BSR, one `tl.dot` per kept block
(and conv tap). The forward of both block ops (linear is the 1x1 convolution of 1x1 maps) and, on the
transposed pattern with flipped taps, their grad-input.

One program per (block row, tile of BLOCK_P output pixels): an accumulator of (bo x BLOCK_P) outputs;
for every kept block of the row and every tap it loads the weight block (bo x bi) and the input tile
(bi x BLOCK_P, zero outside the image) and adds their `tl.dot`. Blocks narrower than 16 (Triton's
smallest dot) are zero-padded to 16 by masked loads. Pixels are the flattened (n, oy, ox); inputs and
outputs are read through their strides (a linear (N, K) tensor is (N, K, 1, 1) with strides (K, 1, 0, 0)).
fp32 dots use TF32 tensor cores (Triton's default), bf16/fp16 accumulate in fp32.
"""

from __future__ import annotations

import torch

from ._common import _interpreting, cdiv, kernel, tl

BLOCK_P = 64


@kernel
def _block_spmm_kernel(x_ptr, w_ptr, bias_ptr, ptr_ptr, idx_ptr, out_ptr,
                       H, W, Ho, Wo, P,
                       sxn, sxc, sxh, sxw, son, sor, soh, sow, swr, swc, swh, sww,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       KH: tl.constexpr, KW: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr,
                       BOP: tl.constexpr, BIP: tl.constexpr, BLOCK_P: tl.constexpr, HAS_BIAS: tl.constexpr,
                       UPCAST: tl.constexpr):
    ob = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    p_ok = p < P
    n = p // (Ho * Wo)
    rem = p % (Ho * Wo)
    oy = rem // Wo
    ox = rem % Wo
    r_loc = tl.arange(0, BOP)
    r_ok = r_loc < BO
    rows = ob * BO + r_loc
    c_loc = tl.arange(0, BIP)
    c_ok = c_loc < BI
    begin = tl.load(ptr_ptr + ob)
    end = tl.load(ptr_ptr + ob + 1)
    acc = tl.full([BOP, BLOCK_P], 0, tl.float32)
    for j in range(begin, end):
        cols = tl.load(idx_ptr + j).to(tl.int64) * BI + c_loc
        for t in range(KH * KW):
            kh = t // KW
            kw = t % KW
            iy = oy * stride_h - pad_h + kh * dil_h
            ix = ox * stride_w - pad_w + kw * dil_w
            ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            xt = tl.load(x_ptr + n[None, :] * sxn + cols[:, None] * sxc + iy[None, :] * sxh + ix[None, :] * sxw,
                         mask=c_ok[:, None] & ok[None, :], other=0)
            wt = tl.load(w_ptr + rows[:, None] * swr + cols[None, :] * swc + kh * swh + kw * sww,
                         mask=r_ok[:, None] & c_ok[None, :], other=0)
            if UPCAST:  # the interpreter's bf16 dot is wrong (numpy has no bf16): exact fp32 instead
                wt, xt = wt.to(tl.float32), xt.to(tl.float32)
            acc += tl.dot(wt, xt)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=r_ok, other=0).to(tl.float32)[:, None]
    tl.store(out_ptr + n[None, :] * son + rows[:, None] * sor + oy[None, :] * soh + ox[None, :] * sow,
             acc.to(out_ptr.dtype.element_ty), mask=r_ok[:, None] & p_ok[None, :])


def _strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride()) if t.dim() == 4 else (t.stride(0), t.stride(1), 0, 0)


def block_spmm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, ptr: torch.Tensor, idx: torch.Tensor,
               bo: int, bi: int, out: torch.Tensor, kernel_size: tuple[int, int], stride=(1, 1), padding=(0, 0),
               dilation=(1, 1)) -> torch.Tensor:
    """Fill `out` ((N, R, Ho, Wo) or (N, R)) with S . im2col(x) + bias: x (N, C, H, W) or (N, C),
    w (R, C, KH, KW) or (R, C) any strides, S the BSR (ptr over R / bo block rows, idx block columns of
    bi input channels). Padding may be negative (a crop)."""
    h, wd = (x.shape[2], x.shape[3]) if x.dim() == 4 else (1, 1)
    ho, wo = (out.shape[2], out.shape[3]) if out.dim() == 4 else (1, 1)
    pixels = x.shape[0] * ho * wo
    if pixels == 0 or out.numel() == 0:
        return out
    grid = (out.shape[1] // bo, cdiv(pixels, BLOCK_P))
    _block_spmm_kernel[grid](
        x, w, bias if bias is not None else out, ptr, idx, out, h, wd, ho, wo, pixels,
        *_strides4(x), *_strides4(out), *_strides4(w), *stride, *padding, *dilation,
        KH=kernel_size[0], KW=kernel_size[1], BO=bo, BI=bi, BOP=max(16, bo), BIP=max(16, bi), BLOCK_P=BLOCK_P,
        HAS_BIAS=bias is not None, UPCAST=_interpreting() and x.dtype == torch.bfloat16)
    return out
