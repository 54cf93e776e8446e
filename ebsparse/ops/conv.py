"""`sparse_conv2d`: conv2d with a sparse weight (groups = 1), grad-weight only at kept positions.

Same two ways in as `sparse_linear` (ebsparse.ops.linear): a plain autograd.Function in eager mode,
the custom ops `ebsparse::sparse_conv2d` / `sparse_conv2d_backward` under torch.compile.
"""

from __future__ import annotations

import torch

from ebsparse.backends import dispatch, registry
from ebsparse.backends.base import Backend, conv2d_output_size
from ebsparse.formats.index import PatternIndex, index_from_tensors, pattern_tensors
from ebsparse.ops import amp, calls
from ebsparse.ops.checks import (check_bias, check_like, check_mask, check_once_differentiable, check_tensor,
                                 checked_pattern, pair)
from ebsparse.ops.inputs import Conv2dInputs

_T = torch.Tensor


# ---- eager: a plain autograd.Function ------------------------------------------------------------

class _EagerSparseConv2d(torch.autograd.Function):
    # Tensors arrive in the autocast dtype (ebsparse.ops.amp); the backward runs under the
    # forward's autocast state.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, input, weight, bias, inputs: Conv2dInputs, backend: Backend):
        ctx.save_for_backward(input, weight)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    @amp.cuda_custom_bwd
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        check_once_differentiable("sparse_conv2d", grad_output, input, weight)
        grad_input, grad_weight = calls.gradients(ctx.backend, ctx.inputs, grad_output, *ctx.needs_input_grad[:2])
        grad_bias = calls.bias_gradient(ctx.inputs, grad_output) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None


# ---- traced: torch.library custom ops ------------------------------------------------------------

def _traced_inputs(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding, dilation,
                   dense_weight_grad):
    return Conv2dInputs(input, weight, bias, mask, index_from_tensors(mask, row_ptr, col_idx, col_ptr, row_idx),
                        list(stride), list(padding), list(dilation), dense_weight_grad)


@torch.library.custom_op("ebsparse::sparse_conv2d", mutates_args=())
def _sparse_conv2d_op(input: _T, weight: _T, bias: _T | None, mask: _T, row_ptr: _T, col_idx: _T, col_ptr: _T,
                      row_idx: _T, stride: list[int], padding: list[int], dilation: list[int], backend: str,
                      dense_weight_grad: bool) -> _T:
    inputs = _traced_inputs(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding,
                            dilation, dense_weight_grad)
    return calls.forward(registry.get_backend(backend), inputs)


@torch.library.custom_op("ebsparse::sparse_conv2d_backward", mutates_args=())
def _sparse_conv2d_backward_op(grad_output: _T, input: _T, weight: _T, mask: _T, row_ptr: _T, col_idx: _T,
                               col_ptr: _T, row_idx: _T, stride: list[int], padding: list[int],
                               dilation: list[int], backend: str, input_grad: bool, weight_grad: bool,
                               dense_weight_grad: bool) -> tuple[_T, _T]:
    """(grad-input, grad-weight); an empty tensor for a gradient not asked for."""
    inputs = _traced_inputs(input, weight, None, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding,
                            dilation, dense_weight_grad)
    grad_input, grad_weight = calls.gradients(registry.get_backend(backend), inputs, grad_output, input_grad,
                                         weight_grad)
    return (grad_input if grad_input is not None else grad_output.new_empty(0),
            grad_weight if grad_weight is not None else grad_output.new_empty(0))


@_sparse_conv2d_op.register_fake
def _(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding, dilation, backend,
      dense_weight_grad):
    inputs = Conv2dInputs(input, weight, bias, mask, None, stride, padding, dilation)
    return input.new_empty(inputs.output_shape())


@_sparse_conv2d_backward_op.register_fake
def _(grad_output, input, weight, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding, dilation, backend,
      input_grad, weight_grad, dense_weight_grad):
    return (input.new_empty(input.shape if input_grad else (0,)),
            weight.new_empty(weight.shape if weight_grad else (0,)))


def _setup_context(ctx, inputs, output):
    (input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, stride, padding, dilation, backend,
     dense_weight_grad) = inputs
    ctx.save_for_backward(input, weight, mask, row_ptr, col_idx, col_ptr, row_idx)
    ctx.geometry = (list(stride), list(padding), list(dilation))
    ctx.backend, ctx.dense_weight_grad, ctx.has_bias = backend, dense_weight_grad, bias is not None


def _traced_backward(ctx, grad_output):
    input, weight, mask, *pattern = ctx.saved_tensors
    check_once_differentiable("sparse_conv2d", grad_output, input, weight)
    input_grad, weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_input, grad_weight = _sparse_conv2d_backward_op(grad_output, input, weight, mask, *pattern, *ctx.geometry,
                                                         ctx.backend, input_grad, weight_grad, ctx.dense_weight_grad)
    grad_bias = grad_output.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return ((grad_input if input_grad else None, grad_weight if weight_grad else None, grad_bias)
            + (None,) * 10)


_sparse_conv2d_op.register_autograd(_traced_backward, setup_context=_setup_context)


# ---- entry points --------------------------------------------------------------------------------

def run_conv2d(input: _T, weight: _T, bias: _T | None, mask: _T, pattern: PatternIndex | None,
               stride: list[int], padding: list[int], dilation: list[int], backend: Backend,
               dense_weight_grad: bool = False) -> _T:
    """`sparse_conv2d` on arguments already checked (geometry as [h, w] lists) and a backend already
    resolved (what the modules call on every forward, after resolving once per input shape)."""
    if torch.compiler.is_compiling():
        # A layer never run eagerly has no cached pattern: its tensors are traced from the mask.
        tensors = pattern.tensors() if pattern is not None else pattern_tensors(mask)
        return _sparse_conv2d_op(input, weight, bias, mask, *tensors, stride, padding, dilation,
                                 backend.name, dense_weight_grad)
    inputs = Conv2dInputs(input, weight, bias, mask, pattern, stride, padding, dilation, dense_weight_grad)
    return _EagerSparseConv2d.apply(input, weight, bias, inputs, backend)


def check_conv2d_args(input, weight, bias, mask, stride, padding, dilation):
    """Checked arguments; returns stride, padding and dilation as [h, w] lists."""
    check_tensor(weight, "weight", dims=4, floating=True)
    check_tensor(input, "input", dims=4, floating=True)
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"weight: expected a kernel of at least 1x1, got shape {tuple(weight.shape)}")
    if input.shape[1] != weight.shape[1]:
        raise ValueError(f"input: expected {weight.shape[1]} channels (weight is {tuple(weight.shape)}, "
                         f"groups = 1), got shape {tuple(input.shape)}")
    check_like(input, weight, "input", "weight")
    check_bias(bias, weight)
    check_mask(mask, weight)
    stride, padding, dilation = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    for axis in (0, 1):
        size = conv2d_output_size(input.shape[2 + axis], weight.shape[2 + axis], stride[axis], padding[axis],
                                  dilation[axis])
        if size < 1:
            raise ValueError(f"input: spatial size {tuple(input.shape[2:])} is too small for kernel "
                             f"{tuple(weight.shape[2:])} with padding {padding} and dilation {dilation}")
    return list(stride), list(padding), list(dilation)


def sparse_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                  stride=1, padding=0, dilation=1, *, index: PatternIndex | None = None, backend: str | None = None,
                  dense_weight_grad: bool = False) -> torch.Tensor:
    """2-D convolution (groups = 1) with a sparse weight.

    Args:
        input: (N, Ci, H, W) floating tensor.
        weight: (Co, Ci, KH, KW); entries where `mask` is False contribute exactly zero, whatever
            they hold.
        bias: (Co,) or None.
        mask: (Co, Ci, KH, KW) bool.
        stride, padding, dilation: ints or pairs, as in `torch.nn.functional.conv2d`.
        index: the pattern index of `mask` (`ebsparse.formats.build_index(mask)`), to avoid
            rebuilding it per call; one that does not describe `mask` raises ValueError.
        backend: a registered backend, "auto" (default) or None for `EBSPARSE_BACKEND`.
        dense_weight_grad: return the full dense weight gradient (RigL update steps).
    Returns:
        (N, Co, Ho, Wo). Raises TypeError/ValueError naming the bad argument before any kernel, and
        RuntimeError for a backend that cannot run or a second-order gradient (differentiable once).
        Under `torch.autocast` it runs in the autocast dtype where a sparse kernel does
        (`ebsparse.ops.amp`).
    """
    input, weight, bias = amp.autocast_args("conv2d", backend, input, weight, bias)
    with amp.cpu_autocast_off():
        if torch.compiler.is_compiling():
            # Nothing can be measured while tracing: an unresolved backend means dense.
            name = backend if backend not in (None, "auto") else "dense"
            stride, padding, dilation = (list(pair(v, n, m)) for v, n, m in
                                         ((stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1)))
            return run_conv2d(input, weight, bias, mask, index, stride,
                              padding, dilation, registry.get_backend(name), dense_weight_grad)
        stride, padding, dilation = check_conv2d_args(input, weight, bias, mask, stride, padding, dilation)
        pattern = checked_pattern(index, mask)
        inputs = Conv2dInputs(input, weight, bias, mask, pattern, stride, padding, dilation)
        return run_conv2d(input, weight, bias, mask, pattern, stride, padding, dilation,
                          dispatch.resolve(backend, inputs), dense_weight_grad)
