"""The dense path's 2-D convolution, with 1x1 convolutions run as batched matrix products.

A 1x1 convolution (stride 1, no padding) of an NCHW image is, per image, the product
(Co, Ci) @ (Ci, H*W). On the CPU at a small U-Net's sizes (the attention's q/k/v/proj_out at 64
channels and 8x8 pixels) oneDNN's convolution spends much of its time converting layouts, and the
products take about two thirds of its time (bench/NOTES.md). A sparse layer resolved to the dense
backend runs this, so the auto backend's fallback costs what the products cost; every other
convolution goes to `F.conv2d`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = ["is_pointwise", "dense_conv2d", "pointwise_conv2d", "pointwise_conv2d_grads"]

_DTYPES = (torch.float32, torch.float64)
#: the profiler scope of these products, so that step breakdowns (bench/breakdown.py) count them as
#: convolutions rather than as attention's batched products
PROFILER_SCOPE = "ebsparse::pointwise_conv2d"
_NO_SCOPE = contextlib.nullcontext()


def _scope():
    """The profiler scope while a profiler records, else nothing: opening a `record_function` costs
    ~45 us on the CPU profiler or not (two per layer step, ~1.6 ms of the digits U-Net's step)."""
    return torch.profiler.record_function(PROFILER_SCOPE) if torch._C._autograd._profiler_enabled() else _NO_SCOPE


def is_pointwise(input: torch.Tensor, weight: torch.Tensor, stride, padding) -> bool:
    """Whether a groups=1 conv of `input` by `weight` is a 1x1, stride-1, unpadded one that the
    matrix products run: a contiguous NCHW float32/float64 input on the CPU (a channels-last input,
    and other devices, where cuDNN has no such overhead, keep `F.conv2d`)."""
    return (weight.dim() == 4 and weight.shape[2] == 1 and weight.shape[3] == 1 and input.dim() == 4
            and tuple(stride) == (1, 1) and tuple(padding) == (0, 0) and input.device.type == "cpu"
            and input.dtype in _DTYPES and input.is_contiguous())


class _PointwiseConv2d(torch.autograd.Function):
    # A Function rather than autograd through bmm: autograd would differentiate the weight broadcast
    # over the batch with a copy of it, and the bias broadcast with a general reduction.
    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        n, ci, h, w = input.shape
        co = weight.shape[0]
        x = input.view(n, ci, h * w)
        w2 = weight.reshape(co, ci).expand(n, co, ci)
        with _scope():
            out = torch.bmm(w2, x) if bias is None else torch.baddbmm(bias.view(1, co, 1), w2, x)
        return out.view(n, co, h, w)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input, grad_weight = pointwise_conv2d_grads(grad_output, input, weight, *ctx.needs_input_grad[:2])
        grad_bias = grad_output.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias


def pointwise_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(input, weight, bias)`` for a 1x1 weight (see `is_pointwise`), differentiable once
    (its backward is `pointwise_conv2d_grads`, outside autograd)."""
    return _PointwiseConv2d.apply(input, weight, bias)


def pointwise_conv2d_grads(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                           input_grad: bool, weight_grad: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad-input, grad-weight) of `pointwise_conv2d` (None where not asked for), outside autograd."""
    with _scope():
        return _grads(grad_output, input, weight, input_grad, weight_grad)


def _grads(grad_output, input, weight, input_grad, weight_grad):
    n, ci, h, w = input.shape
    co = weight.shape[0]
    g = grad_output.reshape(n, co, h * w)
    grad_input = None
    if input_grad:  # bmm on the broadcast weight: matmul would copy g transposed, and its result back
        grad_input = torch.bmm(weight.reshape(co, ci).t().expand(n, ci, co), g).view(input.shape)
    grad_weight = None
    if weight_grad:
        grad_weight = torch.bmm(g, input.view(n, ci, h * w).transpose(1, 2)).sum(0).view(weight.shape)
    return grad_input, grad_weight


def dense_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                 dilation) -> torch.Tensor:
    """``F.conv2d`` (groups = 1), through `pointwise_conv2d` where `is_pointwise` (a 1x1 kernel
    reads one pixel whatever the dilation)."""
    if is_pointwise(input, weight, stride, padding):
        return pointwise_conv2d(input, weight, bias)
    return F.conv2d(input, weight, bias, stride, padding, dilation)
