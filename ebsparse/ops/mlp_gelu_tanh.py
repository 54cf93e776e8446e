"""`sparse_mlp_gelu_tanh`: a transformer MLP with both layers sparse,
``fc2(F.gelu(fc1(x), approximate="tanh"))``, as one op.

The native CPU kernels compute a sparse linear on transposed panels of the batch and transpose each
output tile back to a row-major activation; between fc1 and fc2 that round trip is overhead, since
fc1's tile is the panel fc2 reads once the GELU is applied. The fused op takes each block of rows
through both layers (csrc/cpu/linear/mlp.cpp) and keeps fc1's pre-activation for the backward in
the kernels' panel layout, so the (N, hidden) tensors gelu(h) and dA are never written, and four
transposes of them never run (at DiT-S/2's MLP each is 12.6 MB a step and block). The dense
backend runs the reference maths with ATen.

Eager only: under torch.compile the MLP is its two `sparse_linear` ops and ATen's GELU.
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

__all__ = ["MlpGeluTanhInputs", "run_mlp_gelu_tanh", "sparse_mlp_gelu_tanh", "sparse_mlp_gelu_tanh_reference"]

_T = torch.Tensor


@dataclass(eq=False, slots=True)
class MlpGeluTanhInputs(OnInputTensor):
    """input (N, K); fc1: w1 and mask1 (H, K), b1 (H,) or None; fc2: w2 and mask2 (M, H), b2 (M,) or
    None. `state` keeps what the forward saves for the backward (backend-specific)."""

    op: ClassVar[str] = "mlp_gelu_tanh"
    input: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor | None
    mask1: torch.Tensor
    pattern1: PatternIndex
    w2: torch.Tensor
    b2: torch.Tensor | None
    mask2: torch.Tensor
    pattern2: PatternIndex
    dense_weight_grad: bool = False  # calls.gradients reads it; the fused op never takes the full gradient
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape), tuple(self.w1.shape), tuple(self.w2.shape),
                round(self.pattern1.density, 2), round(self.pattern2.density, 2), self.b1 is not None,
                self.b2 is not None)


def sparse_mlp_gelu_tanh_reference(input: _T, w1: _T, b1: _T | None, mask1: _T, w2: _T, b2: _T | None,
                                   mask2: _T) -> _T:
    """Pure PyTorch: ``F.linear(F.gelu(F.linear(input, w1 * mask1, b1), approximate="tanh"), w2 * mask2, b2)``."""
    return F.linear(F.gelu(F.linear(input, w1 * mask1, b1), approximate="tanh"), w2 * mask2, b2)


class _EagerMlpGeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, w1, b1, w2, b2, inputs: MlpGeluTanhInputs, backend: Backend):
        ctx.save_for_backward(input, w1, w2)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        input, w1, w2 = ctx.saved_tensors
        check_once_differentiable("sparse_mlp_gelu_tanh", grad_output, input, w1, w2)
        needs = ctx.needs_input_grad
        grad_input, grads = calls.gradients(ctx.backend, ctx.inputs, grad_output, needs[0], any(needs[1:5]))
        grads = grads if grads is not None else (None,) * 4
        return (grad_input if needs[0] else None, *(g if need else None for g, need in zip(grads, needs[1:5])),
                None, None)


def run_mlp_gelu_tanh(input: _T, w1: _T, b1: _T | None, mask1: _T, pattern1: PatternIndex | None, w2: _T,
                      b2: _T | None, mask2: _T, pattern2: PatternIndex | None, backend: Backend) -> _T:
    """`sparse_mlp_gelu_tanh` on checked arguments (already in the autocast dtype) and a resolved
    backend. Under torch.compile: two `sparse_linear` ops with `backend` and ATen's GELU."""
    if torch.compiler.is_compiling():
        hidden = F.gelu(run_linear(input, w1, b1, mask1, pattern1, backend), approximate="tanh")
        return run_linear(hidden, w2, b2, mask2, pattern2, backend)
    x2d = input if input.dim() == 2 else input.reshape(-1, w1.shape[1])
    inputs = MlpGeluTanhInputs(x2d, w1, b1, mask1, pattern1, w2, b2, mask2, pattern2)
    out = _EagerMlpGeluTanh.apply(x2d, w1, b1, w2, b2, inputs, backend)
    return out if input.dim() == 2 else out.reshape(*input.shape[:-1], w2.shape[0])


def check_mlp_args(input: _T, w1: _T, b1: _T | None, mask1: _T, w2: _T, b2: _T | None, mask2: _T) -> None:
    """TypeError/ValueError naming the bad argument: each layer's `sparse_linear` checks (their
    message prefixed with the layer's argument names), and fc2 reading fc1's outputs."""
    _check_layer("fc1 (w1, b1, mask1)", input, w1, b1, mask1)
    if w2.dim() != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"w2: expected (M, {w1.shape[0]}) (fc2 reads fc1's {w1.shape[0]} outputs), "
                         f"got {tuple(w2.shape)}")
    _check_layer("fc2 (w2, b2, mask2)", input.new_empty(0, w1.shape[0]), w2, b2, mask2)


def _check_layer(names: str, input: _T, weight: _T, bias: _T | None, mask: _T) -> None:
    try:
        check_linear_args(input, weight, bias, mask)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{names}: {error}") from None


def sparse_mlp_gelu_tanh(input: _T, w1: _T, b1: _T | None, mask1: _T, w2: _T, b2: _T | None, mask2: _T, *,
                         index1: PatternIndex | None = None, index2: PatternIndex | None = None,
                         backend: str | None = None) -> _T:
    """``sparse_linear(F.gelu(sparse_linear(input, w1, b1, mask1), approximate="tanh"), w2, b2, mask2)``
    in one op.

    Args:
        input: (*, K) floating tensor.
        w1, mask1: (H, K) fc1 weight and its kept positions (bool); b1: (H,) or None.
        w2, mask2: (M, H) fc2 weight and its kept positions (bool); b2: (M,) or None.
        index1, index2: the pattern indexes of the masks (`ebsparse.formats.build_index`), as for
            `sparse_linear`.
        backend: "native" (the fused CPU kernels), "dense" (ATen), "auto" (default: the faster,
            measured per shape and densities) or None for `EBSPARSE_BACKEND`.
    Returns:
        (*, M). Raises TypeError/ValueError naming the bad argument before any kernel runs,
        RuntimeError for a backend that cannot run these inputs or a second-order gradient.
    """
    input, w1, b1 = amp.autocast_args("linear", backend, input, w1, b1)
    _, w2, b2 = amp.autocast_args("linear", backend, input, w2, b2)
    with amp.cpu_autocast_off():
        if torch.compiler.is_compiling():
            name = backend if backend not in (None, "auto") else "dense"
            return run_mlp_gelu_tanh(input, w1, b1, mask1, index1, w2, b2, mask2, index2, registry.get_backend(name))
        check_mlp_args(input, w1, b1, mask1, w2, b2, mask2)
        pattern1, pattern2 = checked_pattern(index1, mask1), checked_pattern(index2, mask2)
        inputs = MlpGeluTanhInputs(input.reshape(-1, w1.shape[1]), w1, b1, mask1, pattern1, w2, b2, mask2, pattern2)
        return run_mlp_gelu_tanh(input, w1, b1, mask1, pattern1, w2, b2, mask2, pattern2,
                                 dispatch.resolve(backend, inputs))
