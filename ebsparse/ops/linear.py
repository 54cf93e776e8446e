"""`sparse_linear`: y = x (W o mask)^T + b, with grad-weight computed only at kept positions.

`torch.library` custom ops (forward, grad-input, grad-weight, both gradients at once) take the
backend by name, so `torch.compile` sees opaque ops with fake kernels and the backward runs the same
backend. Eager calls run the same functions through a plain autograd.Function (ebsparse.ops.eager).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ebsparse.formats import PatternIndex, build_index
from ebsparse.ops.checks import check_bias, check_like, check_mask, check_tensor
from ebsparse.ops.eager import eager_function
from ebsparse.ops.registry import get_backend, resolve_backend
from ebsparse.ops.timing import time_call

_T = torch.Tensor


# ---- implementations (shared by the custom ops and the eager autograd.Function) ------------------

def _forward(input: _T, weight: _T, bias: _T | None, mask: _T, row_ptr: _T, col_idx: _T,
             col_ptr: _T, row_idx: _T, backend: str, dense_weight_grad: bool) -> _T:
    return get_backend(backend).linear_forward(input, weight, bias, mask, (row_ptr, col_idx, col_ptr, row_idx))


def _grad_input(grad_output: _T, weight: _T, mask: _T, row_ptr: _T, col_idx: _T, col_ptr: _T,
                row_idx: _T, backend: str) -> _T:
    return get_backend(backend).linear_grad_input(grad_output, weight, mask, (row_ptr, col_idx, col_ptr, row_idx))


def _grad_weight(grad_output: _T, input: _T, mask: _T, row_ptr: _T, col_idx: _T, col_ptr: _T,
                 row_idx: _T, backend: str, dense: bool) -> _T:
    if dense:  # the full gradient, e.g. for RigL's growth criterion every ΔT steps
        return grad_output.t().mm(input)
    return get_backend(backend).linear_grad_weight(grad_output, input, mask, (row_ptr, col_idx, col_ptr, row_idx))


def _backward_both(grad_output: _T, input: _T, weight: _T, mask: _T, row_ptr: _T, col_idx: _T,
                   col_ptr: _T, row_idx: _T, backend: str) -> tuple[_T, _T]:
    """Both gradients at once (kept positions only), so a backend can share the work between them."""
    return get_backend(backend).linear_backward(grad_output, input, weight, mask,
                                                (row_ptr, col_idx, col_ptr, row_idx))


class _Kernels(NamedTuple):
    grad_input: Callable
    grad_weight: Callable
    backward_both: Callable


def _setup_context(ctx, inputs, output):
    input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, backend, dense_weight_grad = inputs
    ctx.save_for_backward(input, weight, mask, row_ptr, col_idx, col_ptr, row_idx)
    ctx.backend = backend
    ctx.dense_weight_grad = dense_weight_grad
    ctx.has_bias = bias is not None


def _gradients(kernels: _Kernels, ctx, grad_output):
    input, weight, mask, *index = ctx.saved_tensors
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0] and ctx.needs_input_grad[1] and not ctx.dense_weight_grad:
        grad_input, grad_weight = kernels.backward_both(grad_output, input, weight, mask, *index, ctx.backend)
    elif ctx.needs_input_grad[0]:
        grad_input = kernels.grad_input(grad_output, weight, mask, *index, ctx.backend)
    if ctx.needs_input_grad[1] and grad_weight is None:
        grad_weight = kernels.grad_weight(grad_output, input, mask, *index, ctx.backend, ctx.dense_weight_grad)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad_output.sum(0)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None


# ---- custom ops: what torch.compile traces (opaque nodes with fake kernels) ----------------------

_sparse_linear = torch.library.custom_op("ebsparse::sparse_linear", _forward, mutates_args=())
_sparse_linear_grad_input = torch.library.custom_op("ebsparse::sparse_linear_grad_input", _grad_input,
                                                    mutates_args=())
_sparse_linear_grad_weight = torch.library.custom_op("ebsparse::sparse_linear_grad_weight", _grad_weight,
                                                     mutates_args=())
_sparse_linear_backward = torch.library.custom_op("ebsparse::sparse_linear_backward", _backward_both,
                                                  mutates_args=())


@_sparse_linear.register_fake
def _(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, backend, dense_weight_grad):
    return input.new_empty((input.shape[0], weight.shape[0]))


@_sparse_linear_grad_input.register_fake
def _(grad_output, weight, mask, row_ptr, col_idx, col_ptr, row_idx, backend):
    return grad_output.new_empty((grad_output.shape[0], weight.shape[1]))


@_sparse_linear_grad_weight.register_fake
def _(grad_output, input, mask, row_ptr, col_idx, col_ptr, row_idx, backend, dense):
    return grad_output.new_empty((grad_output.shape[1], input.shape[1]))


@_sparse_linear_backward.register_fake
def _(grad_output, input, weight, mask, row_ptr, col_idx, col_ptr, row_idx, backend):
    return input.new_empty(input.shape), weight.new_empty(weight.shape)


_TRACED = _Kernels(_sparse_linear_grad_input, _sparse_linear_grad_weight, _sparse_linear_backward)
_EAGER = _Kernels(_grad_input, _grad_weight, _backward_both)
_sparse_linear.register_autograd(lambda ctx, grad_output: _gradients(_TRACED, ctx, grad_output),
                                 setup_context=_setup_context)
# Eager calls skip the custom-op dispatch (ebsparse.ops.eager), running the same code.
_EagerSparseLinear = eager_function("SparseLinearFunction", _forward, _setup_context,
                                    lambda ctx, grad_output: _gradients(_EAGER, ctx, grad_output))


def check_linear_args(input, weight, bias, mask) -> None:
    check_tensor(weight, "weight", dims=2, floating=True)
    check_tensor(input, "input", floating=True)
    if input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input: expected shape (..., {weight.shape[1]}) to match weight "
                         f"{tuple(weight.shape)}, got {tuple(input.shape)}")
    check_like(input, weight, "input", "weight")
    check_bias(bias, weight)
    check_mask(mask, weight)


def sparse_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  mask: torch.Tensor, *, index: PatternIndex | None = None,
                  backend: str | None = None, dense_weight_grad: bool = False) -> torch.Tensor:
    """Linear layer with a sparse weight.

    Args:
        input: (*, K) floating tensor.
        weight: (M, K); entries where `mask` is False are ignored (treated as zero).
        bias: (M,) or None.
        mask: (M, K) bool, the kept positions.
        index: the CSR/CSC of `mask` (`ebsparse.formats.build_index`); pass it to avoid rebuilding
            it on every call (the modules cache it per mask version).
        backend: a registered backend name, "auto" (default; measured once per shape and density)
            or None to use `EBSPARSE_BACKEND` if set.
        dense_weight_grad: return the full dense weight gradient instead of the kept positions
            only (RigL needs it on its update steps; it costs a dense matmul).
    Returns:
        (*, M). Raises TypeError/ValueError naming the bad argument before any kernel runs, and
        RuntimeError if an explicitly requested backend cannot run these inputs.
    """
    if torch.compiler.is_compiling():
        # Nothing can be measured or looked up while tracing: the caller (the module) passes the
        # backend it resolved in eager mode; unresolved means dense.
        name = backend if backend not in (None, "auto") else "dense"
        index = index if index is not None else build_index(mask)
    else:
        check_linear_args(input, weight, bias, mask)
        if index is None:
            index = build_index(mask)
        name = resolve_linear_backend(input, weight, bias, mask, index, backend)
    x2d = input.reshape(-1, weight.shape[1])
    op = _sparse_linear if torch.compiler.is_compiling() else _EagerSparseLinear.apply
    out = op(x2d, weight, bias, mask, *index.tensors(), name, dense_weight_grad)
    return out.reshape(*input.shape[:-1], weight.shape[0])


def resolve_linear_backend(input, weight, bias, mask, index: PatternIndex, backend: str | None) -> str:
    """The backend `sparse_linear` runs for these arguments (measuring candidates on first use)."""
    x2d = input.reshape(-1, weight.shape[1])
    key = (tuple(x2d.shape), tuple(weight.shape), round(index.density, 2), bias is not None)
    tensors = index.tensors()

    def measure(name: str) -> float:
        # forward + grad-input + grad-weight, the work of one training step of this layer
        grad = torch.ones(x2d.shape[0], weight.shape[0], dtype=input.dtype, device=input.device)

        def step():  # the functions the eager autograd.Function runs
            _forward(x2d, weight, bias, mask, *tensors, name, False)
            _backward_both(grad, x2d, weight, mask, *tensors, name)

        if name == "dense":  # what a SparseLinear on the dense path runs: plain autograd ops
            mask_values = mask.to(weight.dtype)

            def step():
                w = weight * mask_values
                torch.nn.functional.linear(x2d, w, bias)
                grad.mm(w)
                grad.t().mm(x2d).mul_(mask_values)

        return time_call(step, input.device)

    return resolve_backend(backend, "linear", input.device, input.dtype, measure, key)
