"""`sparse_conv2d`: conv2d with a sparse weight (groups = 1), grad-weight only at kept positions.

`torch.library` custom ops (forward, grad-input, grad-weight) for torch.compile; eager calls run the
same functions through a plain autograd.Function (ebsparse.ops.eager)."""

from __future__ import annotations

import torch

from ebsparse.formats import PatternIndex, build_index
from ebsparse.ops.checks import check_bias, check_like, check_mask, check_tensor, pair
from ebsparse.ops.eager import eager_function
from ebsparse.ops.registry import get_backend, resolve_backend
from ebsparse.ops.timing import time_call

_T = torch.Tensor


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ---- implementations (shared by the custom ops and the eager autograd.Function) ------------------

def _forward(input: _T, weight: _T, bias: _T | None, mask: _T, row_ptr: _T, col_idx: _T, col_ptr: _T,
             row_idx: _T, stride: list[int], padding: list[int], dilation: list[int], backend: str,
             dense_weight_grad: bool) -> _T:
    return get_backend(backend).conv2d_forward(input, weight, bias, mask, (row_ptr, col_idx, col_ptr, row_idx),
                                               stride, padding, dilation)


def _grad_input(grad_output: _T, weight: _T, mask: _T, row_ptr: _T, col_idx: _T, col_ptr: _T,
                row_idx: _T, input_size: list[int], stride: list[int], padding: list[int],
                dilation: list[int], backend: str) -> _T:
    return get_backend(backend).conv2d_grad_input(grad_output, weight, mask, (row_ptr, col_idx, col_ptr, row_idx),
                                                  input_size, stride, padding, dilation)


def _grad_weight(grad_output: _T, input: _T, mask: _T, row_ptr: _T, col_idx: _T, col_ptr: _T,
                 row_idx: _T, stride: list[int], padding: list[int], dilation: list[int],
                 backend: str, dense: bool) -> _T:
    if dense:  # the full gradient, e.g. for RigL's growth criterion every ΔT steps
        return torch.nn.grad.conv2d_weight(input, list(mask.shape), grad_output, stride, padding, dilation)
    return get_backend(backend).conv2d_grad_weight(grad_output, input, mask, (row_ptr, col_idx, col_ptr, row_idx),
                                                   list(mask.shape), stride, padding, dilation)


def _setup_context(ctx, inputs, output):
    (input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding, dilation, backend,
     dense_weight_grad) = inputs
    ctx.save_for_backward(input, weight, mask, row_ptr, col_idx, col_ptr, row_idx)
    ctx.conv = (list(stride), list(padding), list(dilation))
    ctx.backend = backend
    ctx.dense_weight_grad = dense_weight_grad
    ctx.has_bias = bias is not None


def _readable_once(grad_output: torch.Tensor) -> torch.Tensor:
    """grad_output in a layout every backend reads without copying it again, made once here rather
    than once in each kernel. An expanded gradient (what `y.sum()` hands back: one value, all strides
    0) becomes one (H, W) plane repeated over images and channels, which the native kernels read in
    place (dense ones copy it themselves); anything else is made contiguous."""
    if grad_output.numel() and not any(grad_output.stride()):
        return grad_output[0, 0].contiguous().expand(grad_output.shape)
    return grad_output.contiguous()


def _gradients(grad_input_fn, grad_weight_fn, ctx, grad_output):
    input, weight, mask, *index = ctx.saved_tensors
    stride, padding, dilation = ctx.conv
    grad_input = grad_weight = grad_bias = None
    grad_output = _readable_once(grad_output)
    if ctx.needs_input_grad[0]:
        grad_input = grad_input_fn(grad_output, weight, mask, *index, list(input.shape), stride, padding, dilation,
                                   ctx.backend)
    if ctx.needs_input_grad[1]:
        grad_weight = grad_weight_fn(grad_output, input, mask, *index, stride, padding, dilation, ctx.backend,
                                     ctx.dense_weight_grad)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad_output.sum((0, 2, 3))
    return (grad_input, grad_weight, grad_bias) + (None,) * 10


# ---- custom ops: what torch.compile traces (opaque nodes with fake kernels) ----------------------

_sparse_conv2d = torch.library.custom_op("ebsparse::sparse_conv2d", _forward, mutates_args=())
_sparse_conv2d_grad_input = torch.library.custom_op("ebsparse::sparse_conv2d_grad_input", _grad_input,
                                                    mutates_args=())
_sparse_conv2d_grad_weight = torch.library.custom_op("ebsparse::sparse_conv2d_grad_weight", _grad_weight,
                                                     mutates_args=())


@_sparse_conv2d.register_fake
def _(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding, dilation, backend,
      dense_weight_grad):
    ho = _out_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = _out_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return input.new_empty((input.shape[0], weight.shape[0], ho, wo))


@_sparse_conv2d_grad_input.register_fake
def _(grad_output, weight, mask, row_ptr, col_idx, col_ptr, row_idx, input_size, stride, padding, dilation,
      backend):
    return grad_output.new_empty(input_size)


@_sparse_conv2d_grad_weight.register_fake
def _(grad_output, input, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding, dilation, backend, dense):
    return grad_output.new_empty(mask.shape)


_sparse_conv2d.register_autograd(
    lambda ctx, grad_output: _gradients(_sparse_conv2d_grad_input, _sparse_conv2d_grad_weight, ctx, grad_output),
    setup_context=_setup_context)
# Eager calls skip the custom-op dispatch (ebsparse.ops.eager), running the same code.
_EagerSparseConv2d = eager_function("SparseConv2dFunction", _forward, _setup_context,
                                    lambda ctx, grad_output: _gradients(_grad_input, _grad_weight, ctx, grad_output))


def check_conv2d_args(input, weight, bias, mask, stride, padding, dilation):
    check_tensor(weight, "weight", dims=4, floating=True)
    check_tensor(input, "input", dims=4, floating=True)
    if input.shape[1] != weight.shape[1]:
        raise ValueError(f"input: expected {weight.shape[1]} channels (weight is {tuple(weight.shape)}, "
                         f"groups = 1), got shape {tuple(input.shape)}")
    check_like(input, weight, "input", "weight")
    check_bias(bias, weight)
    check_mask(mask, weight)
    stride, padding, dilation = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    for axis in (0, 1):
        if _out_size(input.shape[2 + axis], weight.shape[2 + axis], stride[axis], padding[axis], dilation[axis]) < 1:
            raise ValueError(f"input: spatial size {tuple(input.shape[2:])} is too small for kernel "
                             f"{tuple(weight.shape[2:])} with padding {padding} and dilation {dilation}")
    return list(stride), list(padding), list(dilation)


def sparse_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                  stride=1, padding=0, dilation=1, *, index: PatternIndex | None = None,
                  backend: str | None = None, dense_weight_grad: bool = False) -> torch.Tensor:
    """2-D convolution (groups = 1) with a sparse weight.

    Args:
        input: (N, Ci, H, W) floating tensor.
        weight: (Co, Ci, KH, KW); entries where `mask` is False are ignored (treated as zero).
        bias: (Co,) or None.
        mask: (Co, Ci, KH, KW) bool.
        stride, padding, dilation: ints or pairs, as in `torch.nn.functional.conv2d`.
        index: CSR/CSC of the mask's (Co, Ci*KH*KW) view; pass it to avoid rebuilding per call.
        backend: a registered backend, "auto" (default) or None for `EBSPARSE_BACKEND`.
        dense_weight_grad: return the full dense weight gradient (RigL update steps).
    Returns:
        (N, Co, Ho, Wo). Raises TypeError/ValueError naming the bad argument before any kernel.
    """
    if torch.compiler.is_compiling():
        # Nothing can be measured while tracing: the module passes the backend it resolved eagerly.
        name = backend if backend not in (None, "auto") else "dense"
        stride, padding, dilation = (list(pair(v, n, m)) for v, n, m in
                                     ((stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1)))
        index = index if index is not None else build_index(mask)
    else:
        stride, padding, dilation = check_conv2d_args(input, weight, bias, mask, stride, padding, dilation)
        if index is None:
            index = build_index(mask)
        name = resolve_conv2d_backend(input, weight, bias, mask, index, stride, padding, dilation, backend)
    op = _sparse_conv2d if torch.compiler.is_compiling() else _EagerSparseConv2d.apply
    return op(input, weight, bias, mask, *index.tensors(), stride, padding, dilation, name, dense_weight_grad)


def resolve_conv2d_backend(input, weight, bias, mask, index: PatternIndex, stride, padding, dilation,
                           backend: str | None) -> str:
    """The backend `sparse_conv2d` runs for these arguments (measuring candidates on first use)."""
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    tensors = index.tensors()
    key = (tuple(input.shape), tuple(weight.shape), tuple(stride), tuple(padding), tuple(dilation),
           round(index.density, 2), bias is not None)

    def measure(name: str) -> float:
        # forward + grad-input + grad-weight, the work of one training step of this layer
        out = _forward(input, weight, bias, mask, *tensors, stride, padding, dilation, name, False)
        grad = torch.ones_like(out)

        def step():  # the functions the eager autograd.Function runs
            _forward(input, weight, bias, mask, *tensors, stride, padding, dilation, name, False)
            _grad_input(grad, weight, mask, *tensors, list(input.shape), stride, padding, dilation, name)
            _grad_weight(grad, input, mask, *tensors, stride, padding, dilation, name, False)

        if name == "dense":  # what a SparseConv2d on the dense path runs: plain autograd ops
            mask_values = mask.to(weight.dtype)

            def step():
                w = weight * mask_values
                torch.nn.functional.conv2d(input, w, bias, stride, padding, dilation)
                _, grad_w, _ = torch.ops.aten.convolution_backward(
                    grad, input, w, None, stride, padding, dilation, False, [0, 0], 1, [True, True, False])
                grad_w.mul_(mask_values)

        return time_call(step, input.device)

    return resolve_backend(backend, "conv2d", input.device, input.dtype, measure, key)
