"""Triton grad-input of the direct sparse convolution, through the CSC of the weight pattern.

dX[n, c, iy, ix] = sum over kept (co, c, kh, kw) and output positions (oy, ox) with
oy*SH - PH + kh*DH = iy and ox*SW - PW + kw*DW = ix of W[co, c, kh, kw] * dY[n, co, oy, ox]. One
program owns input channel c, so it writes its outputs alone; the CSC lists, per kernel tap
(c, kh, kw), the output channels that keep it. Same semantics as
`torch.ops.ebsparse.csr_conv2d_grad_input`.
"""

from __future__ import annotations

import torch

from ._common import (acc_dtype, cdiv, check_float, check_pattern, check_same, kernel, pattern_mask,
                      SUM, require_available, tl)
from .csr_conv2d import BLOCK_J, BLOCK_P, MAX_GRID_AXIS_1, conv_geometry


@kernel
def _conv_grad_input_kernel(dy_ptr, w_ptr, col_ptr, row_idx, dx_ptr,
                            N, C, H, W, CO, HO, WO, KH, KW, SH, SW, PH, PW, DH, DW,
                            ACC_DTYPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    kk = KH * KW
    kc = C * kk
    npos = N * H * W
    for pb in range(tl.program_id(1), (npos + BLOCK_P - 1) // BLOCK_P, tl.num_programs(1)):
        offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
        p_ok = offs_p < npos
        n = offs_p // (H * W)
        iy = (offs_p // W) % H
        ix = offs_p % W
        acc = tl.full([BLOCK_P], 0, ACC_DTYPE)
        for t in range(0, kk):
            col = c * kk + t
            ny = iy + PH - (t // KW) * DH  # = oy * SH when this tap reaches (iy, ix) from output oy
            nx = ix + PW - (t % KW) * DW
            oy = ny // SH
            ox = nx // SW
            pos_ok = p_ok & (ny >= 0) & (nx >= 0) & (ny % SH == 0) & (nx % SW == 0) & (oy < HO) & (ox < WO)
            begin = tl.load(col_ptr + col)
            end = tl.load(col_ptr + col + 1)
            for j0 in range(begin, end, BLOCK_J):
                offs_j = j0 + tl.arange(0, BLOCK_J)
                j_ok = offs_j < end
                co = tl.load(row_idx + offs_j, mask=j_ok, other=0).to(tl.int64)
                w = tl.load(w_ptr + co * kc + col, mask=j_ok, other=0).to(ACC_DTYPE)
                v = tl.load(dy_ptr + ((n[:, None] * CO + co[None, :]) * HO + oy[:, None]) * WO + ox[:, None],
                            mask=pos_ok[:, None] & j_ok[None, :], other=0).to(ACC_DTYPE)
                acc += tl.reduce(v * w[None, :], 1, SUM)
        tl.store(dx_ptr + ((n * C + c) * H + iy) * W + ix, acc.to(dx_ptr.dtype.element_ty), mask=p_ok)


def csr_conv2d_grad_input(grad_output: torch.Tensor, weight: torch.Tensor, col_ptr: torch.Tensor,
                          row_idx: torch.Tensor, input_size, stride, padding, dilation) -> torch.Tensor:
    """dX of shape `input_size` (N, Ci, H, W) from grad_output (N, Co, Ho, Wo) and weight o mask,
    mask given by the CSC of weight's (Co, Ci*KH*KW) view (col_ptr (Ci*KH*KW + 1,), row_idx).
    Raises RuntimeError naming the offending argument."""
    check_float(grad_output, "grad_output")
    check_same(grad_output, weight, "grad_output", "weight")
    input_size = [int(s) for s in input_size]
    ho, wo = conv_geometry(input_size, weight.shape, stride, padding, dilation)
    co, ci, kh, kw = weight.shape
    if tuple(grad_output.shape) != (input_size[0], co, ho, wo):
        raise RuntimeError(f"grad_output: expected {(input_size[0], co, ho, wo)}, got {tuple(grad_output.shape)}")
    check_pattern(col_ptr, row_idx, ci * kh * kw, "col_ptr", "row_idx", weight, co)
    require_available(grad_output.device, "csr_conv2d_grad_input")
    n, _, h, w = input_size
    dx = torch.empty(input_size, dtype=grad_output.dtype, device=grad_output.device)
    if dx.numel() == 0:
        return dx
    grid = (ci, min(cdiv(n * h * w, BLOCK_P), MAX_GRID_AXIS_1))
    _conv_grad_input_kernel[grid](
        grad_output.contiguous(), weight.contiguous(), col_ptr, row_idx, dx, n, ci, h, w, co, ho, wo, kh, kw,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        ACC_DTYPE=acc_dtype(grad_output.dtype), BLOCK_P=BLOCK_P, BLOCK_J=BLOCK_J)
    return dx


def csr_conv2d_grad_input_reference(grad_output: torch.Tensor, weight: torch.Tensor, col_ptr: torch.Tensor,
                                    row_idx: torch.Tensor, input_size, stride, padding, dilation) -> torch.Tensor:
    """Masked dense PyTorch: the input gradient of conv2d with where(mask, weight, 0)."""
    co = weight.shape[0]
    mask = pattern_mask(col_ptr, row_idx, weight[0].numel(), co).T.reshape(weight.shape)
    masked = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    return torch.nn.grad.conv2d_input(list(input_size), masked, grad_output, list(stride), list(padding),
                                      list(dilation))
