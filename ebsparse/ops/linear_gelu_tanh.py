"""`sparse_linear_gelu_tanh`: ``F.gelu(x (W o mask)^T + b, approximate="tanh")``, DiT's fc1 and its
activation as one op.

At MLP sizes the (N, hidden) activations are several MB and come from memory, so the unfused pair
pays separate passes over them: GELU reads the linear's output, its backward reads dA and h and
writes dH, the bias gradient reads dH and the linear's backward reads it again. The native CPU
kernel (`csrc/cpu/linear/linear.cpp`) writes h and gelu(h) from each output tile while it is in
cache, and forms dH = dA * gelu'(h) in the backward's transposed panels (the bias gradient summed
from them), so dH never exists in memory. The dense backend runs ATen, unfused (the reference
maths).

Eager only: under torch.compile it is `sparse_linear` (its traced custom op) followed by ATen's
GELU, which the compiler fuses by itself, so the fused kernels need no fake kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ebsparse.backends import dispatch, registry
from ebsparse.backends.base import Backend
from ebsparse.formats.index import PatternIndex
from ebsparse.ops import amp, calls
from ebsparse.ops.checks import check_once_differentiable, checked_pattern
from ebsparse.ops.inputs import OnInputTensor
from ebsparse.ops.linear import check_linear_args, run_linear

__all__ = ["LinearGeluTanhInputs", "run_linear_gelu_tanh", "sparse_linear_gelu_tanh",
           "sparse_linear_gelu_tanh_reference"]

_T = torch.Tensor


@dataclass(eq=False, slots=True)
class LinearGeluTanhInputs(OnInputTensor):
    """input (N, K), weight and mask (M, K), bias (M,) or None. `state` keeps the forward's
    pre-activation h (N, M) for the backward."""

    op: ClassVar[str] = "linear_gelu_tanh"
    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    pattern: PatternIndex
    dense_weight_grad: bool = False  # calls.gradients reads it; the fused op never takes the full gradient
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape), tuple(self.weight.shape), round(self.pattern.density, 2),
                self.bias is not None)


def sparse_linear_gelu_tanh_reference(input: _T, weight: _T, bias: _T | None, mask: _T) -> _T:
    """Pure PyTorch: ``F.gelu(F.linear(input, weight * mask, bias), approximate="tanh")``."""
    return F.gelu(F.linear(input, weight * mask, bias), approximate="tanh")


class _EagerLinearGeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, inputs: LinearGeluTanhInputs, backend: Backend):
        ctx.save_for_backward(input, weight)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        check_once_differentiable("sparse_linear_gelu_tanh", grad_output, input, weight)
        needs = ctx.needs_input_grad
        grad_input, grads = calls.gradients(ctx.backend, ctx.inputs, grad_output, needs[0], needs[1] or needs[2])
        grad_weight, grad_bias = grads if grads is not None else (None, None)
        return (grad_input if needs[0] else None, grad_weight if needs[1] else None,
                grad_bias if needs[2] else None, None, None)


def run_linear_gelu_tanh(input: _T, weight: _T, bias: _T | None, mask: _T, pattern: PatternIndex | None,
                         backend: Backend) -> _T:
    """`sparse_linear_gelu_tanh` on checked arguments (already in the autocast dtype) and a resolved
    backend. Under torch.compile: `sparse_linear` with `backend`, then ATen's GELU."""
    if torch.compiler.is_compiling():
        return F.gelu(run_linear(input, weight, bias, mask, pattern, backend), approximate="tanh")
    x2d = input if input.dim() == 2 else input.reshape(-1, weight.shape[1])
    inputs = LinearGeluTanhInputs(x2d, weight, bias, mask, pattern)
    out = _EagerLinearGeluTanh.apply(x2d, weight, bias, inputs, backend)
    return out if input.dim() == 2 else out.reshape(*input.shape[:-1], weight.shape[0])


def sparse_linear_gelu_tanh(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            mask: torch.Tensor, *, index: PatternIndex | None = None,
                            backend: str | None = None) -> torch.Tensor:
    """``F.gelu(sparse_linear(input, weight, bias, mask), approximate="tanh")`` in one op.

    Args:
        input: (*, K) floating tensor.
        weight: (M, K); entries where `mask` is False contribute exactly zero.
        bias: (M,) or None.
        mask: (M, K) bool, the kept positions.
        index: the pattern index of `mask` (`ebsparse.formats.build_index(mask)`), as for
            `sparse_linear`.
        backend: "native" (the fused CPU kernel), "dense" (ATen, unfused), "auto" (default: the
            faster, measured per shape and density) or None for `EBSPARSE_BACKEND`.
    Returns:
        (*, M). Raises TypeError/ValueError naming the bad argument before any kernel runs,
        RuntimeError for a backend that cannot run these inputs or a second-order gradient.
    """
    input, weight, bias = amp.autocast_args("linear", backend, input, weight, bias)
    with amp.cpu_autocast_off():
        if torch.compiler.is_compiling():
            name = backend if backend not in (None, "auto") else "dense"
            return run_linear_gelu_tanh(input, weight, bias, mask, index, registry.get_backend(name))
        check_linear_args(input, weight, bias, mask)
        pattern = checked_pattern(index, mask)
        inputs = LinearGeluTanhInputs(input.reshape(-1, weight.shape[1]), weight, bias, mask, pattern)
        return run_linear_gelu_tanh(input, weight, bias, mask, pattern, dispatch.resolve(backend, inputs))
