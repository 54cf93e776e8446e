"""Triton grad-weight of the direct sparse convolution: an SDDMM at the kept taps only.

dW[co, c, kh, kw] = sum_{n, oy, ox} dY[n, co, oy, ox] * X[n, c, oy*SH - PH + kh*DH, ox*SW - PW + kw*DW]
at every kept (co, c, kh, kw) of the CSR, exactly zero elsewhere. Same semantics as
`torch.ops.ebsparse.csr_conv2d_grad_weight`.
"""

from __future__ import annotations

import torch

from ._common import (acc_dtype, check_float, check_pattern, check_same, kernel, pattern_mask, SUM,
                      require_available, tl)
from .csr_conv2d import BLOCK_J, BLOCK_P, conv_geometry


@kernel
def _conv_grad_weight_kernel(dy_ptr, x_ptr, row_ptr, col_idx, dw_ptr,
                             N, C, H, W, CO, HO, WO, KH, KW, SH, SW, PH, PW, DH, DW,
                             ACC_DTYPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr):
    """One program per output channel co: BLOCK_J kept taps at a time, each a dot product over the
    output positions (n, oy, ox) in steps of BLOCK_P."""
    co = tl.program_id(0).to(tl.int64)
    begin = tl.load(row_ptr + co)
    end = tl.load(row_ptr + co + 1)
    kk = KH * KW
    kc = C * kk
    npos = N * HO * WO
    for j0 in range(begin, end, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        j_ok = offs_j < end
        col = tl.load(col_idx + offs_j, mask=j_ok, other=0).to(tl.int64)
        c = col // kk
        kh = (col % kk) // KW
        kw = col % KW
        acc = tl.full([BLOCK_J], 0, ACC_DTYPE)
        for p0 in range(0, npos, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
            p_ok = offs_p < npos
            n = offs_p // (HO * WO)
            oy = (offs_p // WO) % HO
            ox = offs_p % WO
            dy = tl.load(dy_ptr + ((n * CO + co) * HO + oy) * WO + ox, mask=p_ok, other=0).to(ACC_DTYPE)
            iy = oy[:, None] * SH - PH + kh[None, :] * DH
            ix = ox[:, None] * SW - PW + kw[None, :] * DW
            ok = p_ok[:, None] & j_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            v = tl.load(x_ptr + ((n[:, None] * C + c[None, :]) * H + iy) * W + ix, mask=ok, other=0).to(ACC_DTYPE)
            acc += tl.reduce(dy[:, None] * v, 0, SUM)
        tl.store(dw_ptr + co * kc + col, acc.to(dw_ptr.dtype.element_ty), mask=j_ok)


def csr_conv2d_grad_weight(grad_output: torch.Tensor, input: torch.Tensor, row_ptr: torch.Tensor,
                           col_idx: torch.Tensor, weight_size, stride, padding, dilation) -> torch.Tensor:
    """dW of shape `weight_size` (Co, Ci, KH, KW) at the kept positions of the CSR of its
    (Co, Ci*KH*KW) view, zero elsewhere, from grad_output (N, Co, Ho, Wo) and input (N, Ci, H, W).
    Raises RuntimeError naming the offending argument."""
    check_float(grad_output, "grad_output")
    check_same(grad_output, input, "grad_output", "input")
    weight_size = [int(s) for s in weight_size]
    ho, wo = conv_geometry(input.shape, weight_size, stride, padding, dilation)
    co, ci, kh, kw = weight_size
    if tuple(grad_output.shape) != (input.shape[0], co, ho, wo):
        raise RuntimeError(f"grad_output: expected {(input.shape[0], co, ho, wo)}, got {tuple(grad_output.shape)}")
    check_pattern(row_ptr, col_idx, co, "row_ptr", "col_idx", input, ci * kh * kw)
    require_available(input.device, "csr_conv2d_grad_weight")
    n, _, h, w = input.shape
    dw = torch.zeros(weight_size, dtype=input.dtype, device=input.device)
    if dw.numel() == 0 or col_idx.numel() == 0 or n == 0:
        return dw
    _conv_grad_weight_kernel[(co,)](
        grad_output.contiguous(), input.contiguous(), row_ptr, col_idx, dw, n, ci, h, w, co, ho, wo, kh, kw,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        ACC_DTYPE=acc_dtype(input.dtype), BLOCK_P=BLOCK_P, BLOCK_J=BLOCK_J)
    return dw


def csr_conv2d_grad_weight_reference(grad_output: torch.Tensor, input: torch.Tensor, row_ptr: torch.Tensor,
                                     col_idx: torch.Tensor, weight_size, stride, padding,
                                     dilation) -> torch.Tensor:
    """Masked dense PyTorch: where(mask, the dense conv2d weight gradient, 0)."""
    weight_size = [int(s) for s in weight_size]
    mask = pattern_mask(row_ptr, col_idx, weight_size[0], weight_size[1] * weight_size[2] * weight_size[3])
    grad = torch.nn.grad.conv2d_weight(input, weight_size, grad_output, list(stride), list(padding), list(dilation))
    return torch.where(mask.view(weight_size), grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
