"""`gated_residual`: ``input + gate[:, None] * branch``, the gated residual add of DiT's adaLN-Zero
blocks, as one op.

ATen runs it as two passes over the (B, N, C) activations forward (the product, then the sum) and
three backward (the branch's gradient, and a product and a sum for the gate's), each a trip to DRAM
at a DiT's sizes. The native backend (`csrc/cpu/adaln/`) runs one pass each way; the backward writes
the branch's gradient and adds the per-sample sums of the gate's over the tokens in the same pass,
and hands grad_output back as the input's gradient (no copy). The dense backend runs ATen
(``addcmul`` forward).

Eager only: under torch.compile it is the reference formula, so the kernel ops need no fake kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.ops import calls
from ebsparse.ops.checks import check_like, check_once_differentiable, check_tensor
from ebsparse.ops.inputs import OnInputTensor
from ebsparse.ops.reference import gated_residual_reference

__all__ = ["GatedResidualInputs", "check_gated_residual_args", "gated_residual", "run_gated_residual"]


@dataclass(eq=False, slots=True)
class GatedResidualInputs(OnInputTensor):
    """input and branch (B, N, C), gate (B, C). In `calls.gradients` the "input" gradient is the
    branch's (the input's is grad_output itself, which the autograd Function returns) and the
    "weight" gradient is the gate's."""

    op: ClassVar[str] = "gated_residual"
    input: torch.Tensor
    gate: torch.Tensor
    branch: torch.Tensor
    dense_weight_grad: bool = False  # calls.gradients reads it; nothing here is sparse
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape),)


def check_gated_residual_args(input, gate, branch) -> None:
    check_tensor(input, "input", dims=3, floating=True)
    b, _, c = input.shape
    check_tensor(gate, "gate", dims=2, floating=True)
    check_like(gate, input, "gate", "input")
    if tuple(gate.shape) != (b, c):
        raise ValueError(f"gate: expected shape ({b}, {c}) (input's batch and channels), got {tuple(gate.shape)}")
    check_tensor(branch, "branch", floating=True)
    check_like(branch, input, "branch", "input")
    if branch.shape != input.shape:
        raise ValueError(f"branch: expected shape {tuple(input.shape)} (that of input), got {tuple(branch.shape)}")


class _EagerGatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, gate, branch, inputs: GatedResidualInputs, backend: Backend):
        ctx.save_for_backward(gate, branch)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        gate, branch = ctx.saved_tensors
        check_once_differentiable("gated_residual", grad_output, gate, branch)
        needs = ctx.needs_input_grad
        grad_branch, grad_gate = (calls.gradients(ctx.backend, ctx.inputs, grad_output, needs[2], needs[1])
                                  if needs[1] or needs[2] else (None, None))
        return (grad_output if needs[0] else None, grad_gate if needs[1] else None,
                grad_branch if needs[2] else None, None, None)


def run_gated_residual(input: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor,
                       backend: Backend) -> torch.Tensor:
    """`gated_residual` on checked arguments and a resolved backend (what models call per forward)."""
    if torch.compiler.is_compiling():
        return gated_residual_reference(input, gate, branch)
    return _EagerGatedResidual.apply(input, gate, branch, GatedResidualInputs(input, gate, branch), backend)


def gated_residual(input: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor, *,
                   backend: str | None = None) -> torch.Tensor:
    """``input + gate[:, None] * branch`` in one op.

    Args:
        input: (B, N, C) floating tensor (the residual stream).
        gate: (B, C), input's dtype and device (the adaLN gate of each sample).
        branch: (B, N, C), input's dtype and device (the attention's or MLP's output).
        backend: "native" (the fused CPU kernel), "dense" (ATen), "auto" (default: the faster of
            the two, measured per shape) or None for `EBSPARSE_BACKEND`.
    Returns:
        A (B, N, C) tensor. Raises TypeError/ValueError naming the bad argument, RuntimeError for a
        backend that cannot run or a second-order gradient.
    """
    if torch.compiler.is_compiling():
        return gated_residual_reference(input, gate, branch)
    check_gated_residual_args(input, gate, branch)
    inputs = GatedResidualInputs(input, gate, branch)
    return run_gated_residual(input, gate, branch, dispatch.resolve(backend, inputs))
