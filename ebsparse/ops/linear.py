"""`sparse_linear`: y = x (W o mask)^T + b, with grad-weight computed only at kept positions.

Two ways in, one definition of the math (the backend's kernels on a `LinearInputs`):
- eager calls run a plain `torch.autograd.Function`, because calling a `torch.library` custom op
  from Python costs ~0.2 ms per forward and again per backward, more than a whole small layer;
- under `torch.compile` the custom ops `ebsparse::sparse_linear` / `sparse_linear_backward` are
  traced as opaque nodes with fake kernels, the backend passed by name.
"""

from __future__ import annotations

import torch

from ebsparse.backends import dispatch, registry
from ebsparse.backends.base import Backend
from ebsparse.formats.index import PatternIndex, index_from_tensors, pattern_tensors
from ebsparse.ops import amp, calls
from ebsparse.ops.checks import (check_bias, check_like, check_mask, check_once_differentiable, check_tensor,
                                 checked_pattern)
from ebsparse.ops.inputs import LinearInputs

_T = torch.Tensor


# ---- eager: a plain autograd.Function ------------------------------------------------------------

class _EagerSparseLinear(torch.autograd.Function):
    # The tensors arrive already in the autocast dtype (ebsparse.ops.amp); the decorators make the
    # backward run under the forward's autocast state.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, input, weight, bias, inputs: LinearInputs, backend: Backend):
        ctx.save_for_backward(input, weight)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    @amp.cuda_custom_bwd
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        check_once_differentiable("sparse_linear", grad_output, input, weight)
        grad_input, grad_weight = calls.gradients(ctx.backend, ctx.inputs, grad_output, *ctx.needs_input_grad[:2])
        grad_bias = calls.bias_gradient(ctx.inputs, grad_output) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None


# ---- traced: torch.library custom ops ------------------------------------------------------------

def _traced_inputs(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, dense_weight_grad):
    return LinearInputs(input, weight, bias, mask, index_from_tensors(mask, row_ptr, col_idx, col_ptr, row_idx),
                        dense_weight_grad)


@torch.library.custom_op("ebsparse::sparse_linear", mutates_args=())
def _sparse_linear_op(input: _T, weight: _T, bias: _T | None, mask: _T, row_ptr: _T, col_idx: _T, col_ptr: _T,
                      row_idx: _T, backend: str, dense_weight_grad: bool) -> _T:
    inputs = _traced_inputs(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, dense_weight_grad)
    return calls.forward(registry.get_backend(backend), inputs)


@torch.library.custom_op("ebsparse::sparse_linear_backward", mutates_args=())
def _sparse_linear_backward_op(grad_output: _T, input: _T, weight: _T, mask: _T, row_ptr: _T, col_idx: _T,
                               col_ptr: _T, row_idx: _T, backend: str, input_grad: bool, weight_grad: bool,
                               dense_weight_grad: bool) -> tuple[_T, _T]:
    """(grad-input, grad-weight); an empty tensor for a gradient not asked for."""
    inputs = _traced_inputs(input, weight, None, mask, row_ptr, col_idx, col_ptr, row_idx, dense_weight_grad)
    grad_input, grad_weight = calls.gradients(registry.get_backend(backend), inputs, grad_output, input_grad,
                                         weight_grad)
    return (grad_input if grad_input is not None else grad_output.new_empty(0),
            grad_weight if grad_weight is not None else grad_output.new_empty(0))


@_sparse_linear_op.register_fake
def _(input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, backend, dense_weight_grad):
    return input.new_empty((input.shape[0], weight.shape[0]))


@_sparse_linear_backward_op.register_fake
def _(grad_output, input, weight, mask, row_ptr, col_idx, col_ptr, row_idx, backend, input_grad, weight_grad,
      dense_weight_grad):
    return (input.new_empty(input.shape if input_grad else (0,)),
            weight.new_empty(weight.shape if weight_grad else (0,)))


def _setup_context(ctx, inputs, output):
    input, weight, bias, mask, row_ptr, col_idx, col_ptr, row_idx, backend, dense_weight_grad = inputs
    ctx.save_for_backward(input, weight, mask, row_ptr, col_idx, col_ptr, row_idx)
    ctx.backend, ctx.dense_weight_grad, ctx.has_bias = backend, dense_weight_grad, bias is not None


def _traced_backward(ctx, grad_output):
    input, weight, mask, *pattern = ctx.saved_tensors
    check_once_differentiable("sparse_linear", grad_output, input, weight)
    input_grad, weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_input, grad_weight = _sparse_linear_backward_op(grad_output, input, weight, mask, *pattern, ctx.backend,
                                                         input_grad, weight_grad, ctx.dense_weight_grad)
    grad_bias = grad_output.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return ((grad_input if input_grad else None, grad_weight if weight_grad else None, grad_bias)
            + (None,) * 7)


_sparse_linear_op.register_autograd(_traced_backward, setup_context=_setup_context)


# ---- entry points --------------------------------------------------------------------------------

def run_linear(input: _T, weight: _T, bias: _T | None, mask: _T, pattern: PatternIndex | None,
               backend: Backend, dense_weight_grad: bool = False) -> _T:
    """`sparse_linear` on arguments already checked and a backend already resolved (what the
    modules call on every forward, after resolving once per input shape)."""
    x2d = input if input.dim() == 2 else input.reshape(-1, weight.shape[1])
    if torch.compiler.is_compiling():
        # A layer never run eagerly has no cached pattern: its tensors are traced from the mask.
        tensors = pattern.tensors() if pattern is not None else pattern_tensors(mask)
        out = _sparse_linear_op(x2d, weight, bias, mask, *tensors, backend.name, dense_weight_grad)
    else:
        inputs = LinearInputs(x2d, weight, bias, mask, pattern, dense_weight_grad)
        out = _EagerSparseLinear.apply(x2d, weight, bias, inputs, backend)
    return out if input.dim() == 2 else out.reshape(*input.shape[:-1], weight.shape[0])


def linear_inputs(input: _T, weight: _T, bias: _T | None, mask: _T, pattern: PatternIndex,
                  dense_weight_grad: bool = False) -> LinearInputs:
    """The inputs object of a call, as dispatch sees it (input flattened to (N, K))."""
    return LinearInputs(input.reshape(-1, weight.shape[1]), weight, bias, mask, pattern, dense_weight_grad)


def check_linear_args(input, weight, bias, mask) -> None:
    check_tensor(weight, "weight", dims=2, floating=True)
    check_tensor(input, "input", floating=True)
    if weight.numel() == 0:
        raise ValueError(f"weight: a sparse layer needs at least one weight, got shape {tuple(weight.shape)}")
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
        weight: (M, K); entries where `mask` is False contribute exactly zero, whatever they hold.
        bias: (M,) or None.
        mask: (M, K) bool, the kept positions.
        index: the pattern index of `mask` (`ebsparse.formats.build_index(mask)`), to avoid
            rebuilding it on every call; one built from another mask (or from this mask before it
            changed) is compared with `mask` and raises ValueError if it differs.
        backend: a registered backend name, "auto" (default; measured once per shape and density)
            or None to use `EBSPARSE_BACKEND` if set.
        dense_weight_grad: return the full dense weight gradient instead of the kept positions
            only (RigL needs it on its update steps; it costs a dense matmul).
    Returns:
        (*, M). Raises TypeError/ValueError naming the bad argument before any kernel runs, and
        RuntimeError if an explicitly requested backend cannot run these inputs, or when asked for
        a second-order gradient (the op is differentiable once). Under `torch.autocast` it runs in
        the autocast dtype where a sparse kernel does (`ebsparse.ops.amp`).
    """
    input, weight, bias = amp.autocast_args("linear", backend, input, weight, bias)
    with amp.cpu_autocast_off():
        if torch.compiler.is_compiling():
            # Nothing can be measured while tracing: an unresolved backend means dense.
            name = backend if backend not in (None, "auto") else "dense"
            return run_linear(input, weight, bias, mask, index,
                              registry.get_backend(name), dense_weight_grad)
        check_linear_args(input, weight, bias, mask)
        pattern = checked_pattern(index, mask)
        chosen = dispatch.resolve(backend, linear_inputs(input, weight, bias, mask, pattern))
        return run_linear(input, weight, bias, mask, pattern, chosen, dense_weight_grad)
