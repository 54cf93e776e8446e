"""Triton block-sparse SDDMM: the weight gradient of both block ops at kept blocks only,
dW[block j, tap] = dY[rows of j, pixels] . im2col(x)[columns of j, tap, pixels]^T, one `tl.dot` per
tile of BLOCK_P pixels. One program per (kept block, tap), looping over every output pixel; blocks
narrower than 16 are zero-padded to Triton's smallest dot by masked loads. dW is dense-shaped, zero
off the pattern. fp32 dots use TF32 (Triton's default), bf16/fp16 accumulate in fp32.
"""

from __future__ import annotations

import torch

from ._common import _interpreting, kernel, tl

BLOCK_P = 64


@kernel
def _block_sddmm_kernel(x_ptr, dy_ptr, rowof_ptr, idx_ptr, dw_ptr,
                        H, W, Ho, Wo, P,
                        sxn, sxc, sxh, sxw, sdn, sdr, sdh, sdw, swr, swc, swh, sww,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        KW: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr,
                        BOP: tl.constexpr, BIP: tl.constexpr, BLOCK_P: tl.constexpr, UPCAST: tl.constexpr):
    j = tl.program_id(0)
    t = tl.program_id(1)
    kh = t // KW
    kw = t % KW
    rows = tl.load(rowof_ptr + j).to(tl.int64) * BO + tl.arange(0, BOP)
    r_ok = tl.arange(0, BOP) < BO
    cols = tl.load(idx_ptr + j).to(tl.int64) * BI + tl.arange(0, BIP)
    c_ok = tl.arange(0, BIP) < BI
    acc = tl.full([BOP, BIP], 0, tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        p_ok = p < P
        n = p // (Ho * Wo)
        rem = p % (Ho * Wo)
        oy = rem // Wo
        ox = rem % Wo
        iy = oy * stride_h - pad_h + kh * dil_h
        ix = ox * stride_w - pad_w + kw * dil_w
        ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        dyt = tl.load(dy_ptr + n[None, :] * sdn + rows[:, None] * sdr + oy[None, :] * sdh + ox[None, :] * sdw,
                      mask=r_ok[:, None] & p_ok[None, :], other=0)
        xt = tl.load(x_ptr + n[:, None] * sxn + cols[None, :] * sxc + iy[:, None] * sxh + ix[:, None] * sxw,
                     mask=ok[:, None] & c_ok[None, :], other=0)
        if UPCAST:  # the interpreter's bf16 dot is wrong (numpy has no bf16): exact fp32 instead
            dyt, xt = dyt.to(tl.float32), xt.to(tl.float32)
        acc += tl.dot(dyt, xt)
    tl.store(dw_ptr + rows[:, None] * swr + cols[None, :] * swc + kh * swh + kw * sww,
             acc.to(dw_ptr.dtype.element_ty), mask=r_ok[:, None] & c_ok[None, :])


def _strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride()) if t.dim() == 4 else (t.stride(0), t.stride(1), 0, 0)


def block_sddmm(x: torch.Tensor, dy: torch.Tensor, brow_ptr: torch.Tensor, bcol_idx: torch.Tensor, bo: int, bi: int,
                weight_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> torch.Tensor:
    """dW (weight_shape) at the kept blocks of the BSR (brow_ptr, bcol_idx), zero elsewhere:
    x (N, C, H, W) or (N, C), dy (N, R, Ho, Wo) or (N, R)."""
    dw = torch.zeros(weight_shape, dtype=x.dtype, device=x.device)
    nnzb = bcol_idx.numel()
    kh, kw = (weight_shape[2], weight_shape[3]) if len(weight_shape) == 4 else (1, 1)
    h, wd = (x.shape[2], x.shape[3]) if x.dim() == 4 else (1, 1)
    ho, wo = (dy.shape[2], dy.shape[3]) if dy.dim() == 4 else (1, 1)
    pixels = x.shape[0] * ho * wo
    if nnzb == 0 or pixels == 0:
        return dw
    counts = (brow_ptr[1:] - brow_ptr[:-1]).long()
    rowof = torch.repeat_interleave(torch.arange(counts.numel(), device=x.device, dtype=torch.int32), counts)
    _block_sddmm_kernel[(nnzb, kh * kw)](
        x, dy, rowof, bcol_idx, dw, h, wd, ho, wo, pixels, *_strides4(x), *_strides4(dy), *_strides4(dw),
        *stride, *padding, *dilation, KW=kw, BO=bo, BI=bi, BOP=max(16, bo), BIP=max(16, bi), BLOCK_P=BLOCK_P,
        UPCAST=_interpreting() and x.dtype == torch.bfloat16)
    return dw
