"""`gelu_tanh`: ``F.gelu(x, approximate="tanh")``, the activation of DiT's MLP.

ATen's CPU kernel for the tanh approximation costs several times a plain elementwise pass (~6 ms
forward and as much backward for one DiT-S MLP at batch 32 on one core), the largest dense part of a
sparse DiT step. The native backend runs `csrc/cpu/activation/` (the sigmoid form of tanh through a
call-free exp, vectorised); the dense backend runs ATen. The backend is resolved per shape by
`auto` like the other ops.

Eager only: under torch.compile `gelu_tanh` is ATen's op (the compiler fuses it by itself), so
the kernel ops need no fake kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.ops import calls
from ebsparse.ops.checks import check_once_differentiable, check_tensor
from ebsparse.ops.inputs import OnInputTensor

__all__ = ["GeluTanhInputs", "gelu_tanh", "run_gelu_tanh"]


@dataclass(eq=False, slots=True)
class GeluTanhInputs(OnInputTensor):
    """input of any shape; no weight (calls.gradients reads `dense_weight_grad`)."""

    op: ClassVar[str] = "gelu_tanh"
    input: torch.Tensor
    dense_weight_grad: bool = False
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape),)


class _EagerGeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, inputs: GeluTanhInputs, backend: Backend):
        ctx.save_for_backward(input)
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        check_once_differentiable("gelu_tanh", grad_output, input)
        grad_input, _ = calls.gradients(ctx.backend, ctx.inputs, grad_output, True, False)
        return grad_input, None, None


def run_gelu_tanh(input: torch.Tensor, backend: Backend) -> torch.Tensor:
    """`gelu_tanh` on a checked input and a resolved backend (what modules call per forward)."""
    if torch.compiler.is_compiling():
        return F.gelu(input, approximate="tanh")
    return _EagerGeluTanh.apply(input, GeluTanhInputs(input), backend)


def gelu_tanh(input: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``F.gelu(input, approximate="tanh")``.

    Args:
        input: floating tensor of any shape.
        backend: "native" (the CPU kernel), "dense" (ATen), "auto" (default: the faster, measured
            per shape) or None for `EBSPARSE_BACKEND`.
    Returns a tensor like `input`. Raises TypeError naming a bad input, RuntimeError for a backend
    that cannot run or a second-order gradient.
    """
    if torch.compiler.is_compiling():
        return F.gelu(input, approximate="tanh")
    check_tensor(input, "input", floating=True)
    return run_gelu_tanh(input, dispatch.resolve(backend, GeluTanhInputs(input)))
