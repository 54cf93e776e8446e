"""The Triton block-sparse ops, with the semantics of `torch.ops.ebsparse.bsr_*` (csrc/cpu/block/block.h):
forward and grad-input through `block_spmm` (grad-input: the transposed pattern on the transposed,
tap-flipped weight, grad_output spread onto the stride grid for strided convolutions), grad-weight
through `block_sddmm`. fp32 (TF32 dots), bf16 and fp16."""

from __future__ import annotations

import torch

from ._common import check_same, require_available
from .block_sddmm import block_sddmm
from .block_spmm import block_spmm

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(x: torch.Tensor, w: torch.Tensor, op: str) -> None:
    require_available(x.device, op)
    if x.dtype not in DTYPES:
        raise RuntimeError(f"input: expected float32, float16 or bfloat16 (tl.dot), got {x.dtype}")
    check_same(x, w, "input", "weight")


def bsr_linear(input, weight, bias, brow_ptr, bcol_idx, bo: int, bi: int) -> torch.Tensor:
    _check(input, weight, "bsr_linear")
    out = torch.empty(input.shape[0], weight.shape[0], dtype=input.dtype, device=input.device)
    return block_spmm(input, weight, bias, brow_ptr, bcol_idx, bo, bi, out, (1, 1))


def bsr_linear_backward(grad_output, input, weight, brow_ptr, bcol_idx, bcol_ptr, brow_idx, bo: int, bi: int,
                        input_grad: bool, weight_grad: bool):
    _check(input, weight, "bsr_linear_backward")
    grad_input = grad_weight = None
    if input_grad:
        grad_input = torch.empty_like(input, memory_format=torch.contiguous_format)
        block_spmm(grad_output, weight.t(), None, bcol_ptr, brow_idx, bi, bo, grad_input, (1, 1))
    if weight_grad:
        grad_weight = block_sddmm(input, grad_output, brow_ptr, bcol_idx, bo, bi, tuple(weight.shape))
    return grad_input, grad_weight


def bsr_conv2d(input, weight, bias, brow_ptr, bcol_idx, bo: int, bi: int, stride, padding, dilation) -> torch.Tensor:
    _check(input, weight, "bsr_conv2d")
    n, _, h, w = input.shape
    co, _, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = torch.empty(n, co, ho, wo, dtype=input.dtype, device=input.device)
    return block_spmm(input, weight, bias, brow_ptr, bcol_idx, bo, bi, out, (kh, kw), stride, padding, dilation)


def bsr_conv2d_backward(grad_output, input, weight, brow_ptr, bcol_idx, bcol_ptr, brow_idx, bo: int, bi: int,
                        stride, padding, dilation, input_grad: bool, weight_grad: bool):
    _check(input, weight, "bsr_conv2d_backward")
    grad_input = grad_weight = None
    kh, kw = weight.shape[2], weight.shape[3]
    if input_grad:
        spread = grad_output
        if stride[0] != 1 or stride[1] != 1:
            ho, wo = grad_output.shape[2:]
            spread = grad_output.new_zeros(grad_output.shape[0], grad_output.shape[1], (ho - 1) * stride[0] + 1,
                                           (wo - 1) * stride[1] + 1)
            spread[:, :, ::stride[0], ::stride[1]] = grad_output
        flipped = weight.transpose(0, 1).flip(2, 3)  # (Ci, Co, KH, KW), taps reversed
        pad = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
        grad_input = torch.empty_like(input, memory_format=torch.contiguous_format)
        block_spmm(spread, flipped, None, bcol_ptr, brow_idx, bi, bo, grad_input, (kh, kw), (1, 1), pad, dilation)
    if weight_grad:
        grad_weight = block_sddmm(input, grad_output, brow_ptr, bcol_idx, bo, bi, tuple(weight.shape), stride,
                                  padding, dilation)
    return grad_input, grad_weight
