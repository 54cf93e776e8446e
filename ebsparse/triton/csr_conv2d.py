"""Triton direct sparse convolution forward: Y = conv2d(X, W o mask) + bias (groups = 1).

The weight W (Co, Ci, KH, KW) is read in place at the kept positions of the CSR of its (Co, Ci*KH*KW)
view (row_ptr, col_idx); each kept tap gathers its input window straight from X (implicit GEMM,
no unfold). Same semantics as `torch.ops.ebsparse.csr_conv2d`. The geometry checks shared by the
three conv kernels live here.
"""

from __future__ import annotations

import torch

from ebsparse.backends.base import conv2d_output_size

from ._common import (acc_dtype, cdiv, check_float, check_pattern, check_same, kernel, pattern_mask,
                      SUM, require_available, tl)

# Output positions (over n, oy, ox) and kept entries handled per step of one program.
BLOCK_P = 64
BLOCK_J = 32
MAX_GRID_AXIS_1 = 65535  # CUDA's limit on grid axis 1; the kernels loop over the blocks beyond it


def conv_geometry(input_size, weight_size, stride, padding, dilation) -> tuple[int, int]:
    """(Ho, Wo) of a conv of `input_size` (N, Ci, H, W) with `weight_size` (Co, Ci, KH, KW); raises
    RuntimeError naming the argument that makes it impossible."""
    if len(input_size) != 4:
        raise RuntimeError(f"input: expected (N, C, H, W), got shape {tuple(input_size)}")
    if len(weight_size) != 4 or weight_size[1] != input_size[1]:
        raise RuntimeError(f"weight: expected (Co, {input_size[1]}, KH, KW), got shape {tuple(weight_size)}")
    for name, value, least in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(value) != 2 or any(int(v) < least for v in value):
            raise RuntimeError(f"{name}: expected two integers >= {least}, got {list(value)}")
    ho = conv2d_output_size(input_size[2], weight_size[2], stride[0], padding[0], dilation[0])
    wo = conv2d_output_size(input_size[3], weight_size[3], stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise RuntimeError(f"input: spatial size {tuple(input_size[2:])} is too small for kernel "
                           f"{tuple(weight_size[2:])} with padding {list(padding)} and dilation {list(dilation)}")
    return ho, wo


@kernel
def _conv_forward_kernel(x_ptr, w_ptr, bias_ptr, row_ptr, col_idx, out_ptr,
                         N, C, H, W, CO, HO, WO, KH, KW, SH, SW, PH, PW, DH, DW,
                         HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr):
    """out[n, co, oy, ox] = bias[co] + sum over kept (c, kh, kw) of row co of
    W[co, c, kh, kw] * X[n, c, oy*SH - PH + kh*DH, ox*SW - PW + kw*DW] (zero outside X).

    One program per output channel co (axis 0) and block of BLOCK_P output positions (axis 1,
    looping when the grid is capped); all tensors contiguous NCHW.
    """
    co = tl.program_id(0).to(tl.int64)
    begin = tl.load(row_ptr + co)
    end = tl.load(row_ptr + co + 1)
    kk = KH * KW
    kc = C * kk
    npos = N * HO * WO
    for pb in range(tl.program_id(1), (npos + BLOCK_P - 1) // BLOCK_P, tl.num_programs(1)):
        offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
        p_ok = offs_p < npos
        n = offs_p // (HO * WO)
        oy = (offs_p // WO) % HO
        ox = offs_p % WO
        acc = tl.full([BLOCK_P], 0, ACC_DTYPE)
        for j0 in range(begin, end, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            j_ok = offs_j < end
            col = tl.load(col_idx + offs_j, mask=j_ok, other=0).to(tl.int64)
            c = col // kk
            kh = (col % kk) // KW
            kw = col % KW
            w = tl.load(w_ptr + co * kc + col, mask=j_ok, other=0).to(ACC_DTYPE)
            iy = oy[:, None] * SH - PH + kh[None, :] * DH
            ix = ox[:, None] * SW - PW + kw[None, :] * DW
            ok = p_ok[:, None] & j_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            v = tl.load(x_ptr + ((n[:, None] * C + c[None, :]) * H + iy) * W + ix, mask=ok, other=0).to(ACC_DTYPE)
            acc += tl.reduce(v * w[None, :], 1, SUM)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + co).to(ACC_DTYPE)
        tl.store(out_ptr + ((n * CO + co) * HO + oy) * WO + ox, acc.to(out_ptr.dtype.element_ty), mask=p_ok)


def csr_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, row_ptr: torch.Tensor,
               col_idx: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    """Y (N, Co, Ho, Wo) = conv2d(input, weight o mask, bias, stride, padding, dilation), groups = 1,
    mask given by the CSR of weight's (Co, Ci*KH*KW) view (contiguous int32). Accumulates in
    float32 (float64 for float64). Raises RuntimeError naming the offending argument."""
    check_float(input, "input")
    check_same(input, weight, "input", "weight")
    ho, wo = conv_geometry(input.shape, weight.shape, stride, padding, dilation)
    co, ci, kh, kw = weight.shape
    check_pattern(row_ptr, col_idx, co, "row_ptr", "col_idx", input, ci * kh * kw)
    if bias is not None:
        check_same(input, bias, "input", "bias")
        if bias.dim() != 1 or bias.shape[0] != co:
            raise RuntimeError(f"bias: expected ({co},), got {tuple(bias.shape)}")
    require_available(input.device, "csr_conv2d")
    n, _, h, w = input.shape
    out = torch.empty(n, co, ho, wo, dtype=input.dtype, device=input.device)
    if out.numel() == 0:
        return out
    grid = (co, min(cdiv(n * ho * wo, BLOCK_P), MAX_GRID_AXIS_1))
    _conv_forward_kernel[grid](
        input.contiguous(), weight.contiguous(), bias.contiguous() if bias is not None else out, row_ptr, col_idx,
        out, n, ci, h, w, co, ho, wo, kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0],
        dilation[1], HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype(input.dtype), BLOCK_P=BLOCK_P, BLOCK_J=BLOCK_J)
    return out


def csr_conv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         row_ptr: torch.Tensor, col_idx: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    """Masked dense PyTorch: conv2d(input, where(mask, weight, 0), bias, ...)."""
    mask = pattern_mask(row_ptr, col_idx, weight.shape[0], weight[0].numel()).view(weight.shape)
    masked = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    return torch.nn.functional.conv2d(input, masked, bias, list(stride), list(padding), list(dilation))
