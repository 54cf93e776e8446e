"""Triton tensor-core kernels of the 2:4 sparse conv2d as implicit GEMMs over channels-last data.

The weight, viewed as the GEMM matrix Wr (Co, T*Ci) with T = KH*KW taps and input channels last
(column t*Ci + ci), keeps 2 of every 4 consecutive input channels of each (co, tap): `meta`
(Co, T*Ci/4) uint8 as in `twofour_linear_kernels`. Nothing is unfolded in memory: each tile of the
im2col matrix is gathered from the NHWC input as the loop reaches it (contiguous along channels,
so loads coalesce), and multiplied on the tensor cores with fp32 accumulation:

- forward      Y (P, Co)   = cols(X) (P, T*Ci) . Wr^T + b   programs over (P, Co) tiles
- grad-input   dX (Q, Ci)  = sum over taps of dY gathered at the output pixel each input pixel
               feeds (stride and dilation respected) . Wr[:, tap]   programs over (Q, Ci) tiles
- grad-weight  dWr (Co, T*Ci) = mask o (dY^T . cols(X))           programs over (Co, T*Ci) tiles

with P = N*Ho*Wo output pixels and Q = N*H*W input pixels. Same masking rules as the linear
kernels (dropped weights exactly zero, NaN included; dW exactly zero off the pattern), and the same
interpreter note (`UPCAST`).
"""

from __future__ import annotations

import torch

from ._common import _interpreting, cdiv, kernel, require_available, tl
from .twofour_linear_kernels import DTYPES, _launch, _precision


@kernel
def _forward_kernel(x_ptr, w_ptr, meta_ptr, bias_ptr, y_ptr, P, Co, Ci, H, W, Ho, Wo,
                    SH, SW, PH, PW, DH, DW, KW: tl.constexpr, TAPS: tl.constexpr, HAS_BIAS: tl.constexpr,
                    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_A: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_co = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    p_ok = offs_p < P
    co_ok = offs_co < Co
    n = offs_p // (Ho * Wo)
    rest = offs_p % (Ho * Wo)
    oh = rest // Wo
    ow = rest % Wo
    row_len = TAPS * Ci
    acc = tl.full([BLOCK_A, BLOCK_B], 0, tl.float32)
    for t in range(0, TAPS):
        ih = oh * SH - PH + (t // KW) * DH
        iw = ow * SW - PW + (t % KW) * DW
        in_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        base = ((n * H + ih) * W + iw) * Ci
        for c0 in range(0, Ci, BLOCK_K):
            cc = c0 + tl.arange(0, BLOCK_K)
            c_ok = cc < Ci
            a = tl.load(x_ptr + base[:, None] + cc[None, :], mask=in_ok[:, None] & c_ok[None, :], other=0)
            kk = t * Ci + cc
            wm = co_ok[:, None] & c_ok[None, :]
            meta = tl.load(meta_ptr + offs_co[:, None] * (row_len // 4) + (kk // 4)[None, :], mask=wm,
                           other=0).to(tl.int32)
            pos = (kk % 4)[None, :]
            keep = ((pos == (meta & 3)) | (pos == ((meta >> 2) & 3))) & wm
            w = tl.load(w_ptr + offs_co[:, None] * row_len + kk[None, :], mask=wm, other=0)
            w = tl.where(keep, w, 0)
            if UPCAST:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_co, mask=co_ok, other=0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_p[:, None] * Co + offs_co[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=p_ok[:, None] & co_ok[None, :])


@kernel
def _grad_input_kernel(dy_ptr, w_ptr, meta_ptr, dx_ptr, Q, Co, Ci, H, W, Ho, Wo,
                       SH, SW, PH, PW, DH, DW, KW: tl.constexpr, TAPS: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    offs_q = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    cc = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    q_ok = offs_q < Q
    c_ok = cc < Ci
    n = offs_q // (H * W)
    rest = offs_q % (H * W)
    ih = rest // W
    iw = rest % W
    row_len = TAPS * Ci
    acc = tl.full([BLOCK_A, BLOCK_B], 0, tl.float32)
    for t in range(0, TAPS):
        # The output pixel this input pixel feeds through tap t, if any.
        num_h = ih + PH - (t // KW) * DH
        num_w = iw + PW - (t % KW) * DW
        oh = num_h // SH
        ow = num_w // SW
        out_ok = q_ok & (num_h >= 0) & (num_w >= 0) & (num_h % SH == 0) & (num_w % SW == 0) & (oh < Ho) & (ow < Wo)
        base = ((n * Ho + oh) * Wo + ow) * Co
        kk = t * Ci + cc
        for co0 in range(0, Co, BLOCK_K):
            offs_co = co0 + tl.arange(0, BLOCK_K)
            co_ok = offs_co < Co
            dy = tl.load(dy_ptr + base[:, None] + offs_co[None, :], mask=out_ok[:, None] & co_ok[None, :], other=0)
            wm = co_ok[:, None] & c_ok[None, :]
            meta = tl.load(meta_ptr + offs_co[:, None] * (row_len // 4) + (kk // 4)[None, :], mask=wm,
                           other=0).to(tl.int32)
            pos = (kk % 4)[None, :]
            keep = ((pos == (meta & 3)) | (pos == ((meta >> 2) & 3))) & wm
            w = tl.load(w_ptr + offs_co[:, None] * row_len + kk[None, :], mask=wm, other=0)
            w = tl.where(keep, w, 0)
            if UPCAST:
                dy = dy.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(dy, w, acc, input_precision=PRECISION)
    tl.store(dx_ptr + offs_q[:, None] * Ci + cc[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=q_ok[:, None] & c_ok[None, :])


@kernel
def _grad_weight_kernel(dy_ptr, x_ptr, meta_ptr, dw_ptr, P, Co, Ci, H, W, Ho, Wo,
                        SH, SW, PH, PW, DH, DW, KW: tl.constexpr, TAPS: tl.constexpr, UPCAST: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    offs_co = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    kk = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_len = TAPS * Ci
    co_ok = offs_co < Co
    k_ok = kk < row_len
    t = kk // Ci
    cc = kk % Ci
    dh = (t // KW) * DH
    dw = (t % KW) * DW
    acc = tl.full([BLOCK_A, BLOCK_B], 0, tl.float32)
    for p0 in range(0, P, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)
        p_ok = offs_p < P
        n = offs_p // (Ho * Wo)
        rest = offs_p % (Ho * Wo)
        oh = rest // Wo
        ow = rest % Wo
        dy = tl.load(dy_ptr + offs_p[:, None] * Co + offs_co[None, :], mask=p_ok[:, None] & co_ok[None, :], other=0)
        ih = (oh * SH - PH)[:, None] + dh[None, :]
        iw = (ow * SW - PW)[:, None] + dw[None, :]
        ok = p_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + ((n[:, None] * H + ih) * W + iw) * Ci + cc[None, :], mask=ok, other=0)
        if UPCAST:
            dy = dy.to(tl.float32)
            a = a.to(tl.float32)
        acc = tl.dot(tl.trans(dy), a, acc, input_precision=PRECISION)
    wm = co_ok[:, None] & k_ok[None, :]
    meta = tl.load(meta_ptr + offs_co[:, None] * (row_len // 4) + (kk // 4)[None, :], mask=wm, other=0).to(tl.int32)
    pos = (kk % 4)[None, :]
    keep = (pos == (meta & 3)) | (pos == ((meta >> 2) & 3))
    tl.store(dw_ptr + offs_co[:, None] * row_len + kk[None, :], tl.where(keep, acc, 0).to(dw_ptr.dtype.element_ty),
             mask=wm)


# ---- launchers -----------------------------------------------------------------------------------

def _geometry(input_shape, weight_shape, stride, padding, dilation):
    from ebsparse.backends.base import conv2d_output_size

    n, ci, h, w = input_shape
    co, _, kh, kw = weight_shape
    ho = conv2d_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv2d_output_size(w, kw, stride[1], padding[1], dilation[1])
    return n, ci, h, w, co, kh, kw, ho, wo


def _check(input_like: torch.Tensor, name: str, weight: torch.Tensor, meta: torch.Tensor) -> None:
    if input_like.dtype not in DTYPES:
        raise RuntimeError(f"{name}: expected float32, float16 or bfloat16, got {input_like.dtype}")
    if weight.dim() != 4 or weight.dtype != input_like.dtype:
        raise RuntimeError(f"weight: expected (Co, Ci, KH, KW) of dtype {input_like.dtype}, got "
                           f"{weight.dtype} {tuple(weight.shape)}")
    co, ci, kh, kw = weight.shape
    if ci % 4:
        raise RuntimeError(f"weight: in_channels ({ci}) must be a multiple of 4 for 2:4")
    if meta.dtype != torch.uint8 or tuple(meta.shape) != (co, kh * kw * ci // 4):
        raise RuntimeError(f"meta: expected uint8 of shape ({co}, {kh * kw * ci // 4}), got {meta.dtype} "
                           f"{tuple(meta.shape)}")


def weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """(Co, KH*KW*Ci) with input channels last: the GEMM matrix the kernels read."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()


def _geometry_args(h, w, ho, wo, stride, padding, dilation):
    return (h, w, ho, wo, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


def twofour_conv2d(input, weight, meta, bias, stride, padding, dilation) -> torch.Tensor:
    """Conv2d (groups 1) of input (N, Ci, H, W) with a 2:4 weight (Co, Ci, KH, KW) given by `meta`
    (Co, KH*KW*Ci/4) uint8; output (N, Co, Ho, Wo), channels-last."""
    _check(input, "input", weight, meta)
    require_available(input.device, "twofour_conv2d")
    n, ci, h, w, co, kh, kw, ho, wo = _geometry(input.shape, weight.shape, stride, padding, dilation)
    out = torch.empty(n, ho, wo, co, dtype=input.dtype, device=input.device)
    p = n * ho * wo
    if p and co:
        x = input.permute(0, 2, 3, 1).contiguous()
        _launch(_forward_kernel, "conv_forward", lambda c: (cdiv(p, c["BLOCK_A"]), cdiv(co, c["BLOCK_B"])),
                (x, weight_rows(weight), meta.contiguous(), bias if bias is not None else out, out, p, co, ci,
                 *_geometry_args(h, w, ho, wo, stride, padding, dilation)),
                dict(KW=kw, TAPS=kh * kw, HAS_BIAS=bias is not None, UPCAST=_interpreting(),
                     PRECISION=_precision(input.dtype)), ("P", "Co", "Ci"))
    return out.permute(0, 3, 1, 2)


def twofour_conv2d_grad_input(grad_output, weight, meta, input_shape, stride, padding, dilation) -> torch.Tensor:
    _check(grad_output, "grad_output", weight, meta)
    require_available(grad_output.device, "twofour_conv2d_grad_input")
    n, ci, h, w, co, kh, kw, ho, wo = _geometry(input_shape, weight.shape, stride, padding, dilation)
    out = torch.empty(n, h, w, ci, dtype=grad_output.dtype, device=grad_output.device)
    q = n * h * w
    if q and ci:
        dy = grad_output.permute(0, 2, 3, 1).contiguous()
        _launch(_grad_input_kernel, "conv_grad_input", lambda c: (cdiv(q, c["BLOCK_A"]), cdiv(ci, c["BLOCK_B"])),
                (dy, weight_rows(weight), meta.contiguous(), out, q, co, ci,
                 *_geometry_args(h, w, ho, wo, stride, padding, dilation)),
                dict(KW=kw, TAPS=kh * kw, UPCAST=_interpreting(), PRECISION=_precision(dy.dtype)), ("Q", "Co", "Ci"))
    return out.permute(0, 3, 1, 2)


def twofour_conv2d_grad_weight(grad_output, input, meta, weight_shape, stride, padding, dilation) -> torch.Tensor:
    co, ci, kh, kw = weight_shape
    if input.dtype not in DTYPES or grad_output.dtype != input.dtype:
        raise RuntimeError(f"input: expected float32, float16 or bfloat16 like grad_output, got {input.dtype}")
    if meta.dtype != torch.uint8 or tuple(meta.shape) != (co, kh * kw * ci // 4) or ci % 4:
        raise RuntimeError(f"meta: expected uint8 of shape ({co}, {kh * kw * ci // 4}), got {tuple(meta.shape)}")
    require_available(input.device, "twofour_conv2d_grad_weight")
    n, ci, h, w, co, kh, kw, ho, wo = _geometry(input.shape, weight_shape, stride, padding, dilation)
    rows = torch.zeros(co, kh * kw * ci, dtype=input.dtype, device=input.device)
    p = n * ho * wo
    if p and co and ci:
        x = input.permute(0, 2, 3, 1).contiguous()
        dy = grad_output.permute(0, 2, 3, 1).contiguous()
        k = kh * kw * ci
        _launch(_grad_weight_kernel, "conv_grad_weight", lambda c: (cdiv(co, c["BLOCK_A"]), cdiv(k, c["BLOCK_B"])),
                (dy, x, meta.contiguous(), rows, p, co, ci, *_geometry_args(h, w, ho, wo, stride, padding, dilation)),
                dict(KW=kw, TAPS=kh * kw, UPCAST=_interpreting(), PRECISION=_precision(dy.dtype)), ("P", "Co", "Ci"))
    return rows.reshape(co, kh, kw, ci).permute(0, 3, 1, 2).contiguous()
