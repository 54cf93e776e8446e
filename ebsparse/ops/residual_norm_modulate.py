"""`residual_norm_modulate`: a DiT block's gated residual add followed by the next adaLN norm,
``out = input + gate[:, None] * branch`` and ``y = LayerNorm(out) * (1 + scale[:, None]) +
shift[:, None]``, as one op returning (out, y).

`gated_residual` and `layer_norm_modulate` are one memory pass each; chained, the norm reads back
the (B, N, C) tensor the add just wrote, and in the backward autograd adds the residual stream's
gradient to the norm's input gradient in a pass of its own before the gated add's backward reads
the sum. The native backend (`csrc/cpu/adaln/`) runs both kernels on each block of 32 token rows
while it is in cache, and folds that addition into its backward. The dense backend composes the
two ops' ATen maths.

Eager only: under torch.compile it is the reference formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.ops import calls
from ebsparse.ops.checks import check_once_differentiable
from ebsparse.ops.gated_residual import check_gated_residual_args
from ebsparse.ops.inputs import OnInputTensor
from ebsparse.ops.layer_norm_modulate import check_layer_norm_modulate_args
from ebsparse.ops.reference import gated_residual_reference, layer_norm_modulate_reference

__all__ = ["ResidualNormModulateInputs", "residual_norm_modulate", "residual_norm_modulate_reference",
           "run_residual_norm_modulate"]

_T = torch.Tensor


@dataclass(eq=False, slots=True)
class ResidualNormModulateInputs(OnInputTensor):
    """input and branch (B, N, C); gate, shift and scale (B, C); the norm's `eps`. The backward's
    grad_output is the pair (grad_out or None, grad_y); its "weight" gradients are (grad_gate,
    grad_branch, grad_shift, grad_scale). `state` holds what the forward keeps for the backward."""

    op: ClassVar[str] = "residual_norm_modulate"
    input: torch.Tensor
    gate: torch.Tensor
    branch: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    eps: float
    dense_weight_grad: bool = False  # calls.gradients reads it; nothing here is sparse
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape),)


def residual_norm_modulate_reference(input: _T, gate: _T, branch: _T, shift: _T, scale: _T,
                                     eps: float = 1e-6) -> tuple[_T, _T]:
    """(out, y): ``out = input + gate[:, None] * branch``, ``y = LN(out) * (1 + scale[:, None]) + shift[:, None]``."""
    out = gated_residual_reference(input, gate, branch)
    return out, layer_norm_modulate_reference(out, shift, scale, eps)


class _EagerResidualNormModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, gate, branch, shift, scale, inputs: ResidualNormModulateInputs, backend: Backend):
        ctx.inputs, ctx.backend = inputs, backend
        ctx.set_materialize_grads(False)  # an unused `out` needs no zero tensor to add
        out, y = calls.forward(backend, inputs)
        # The backends keep `out` in state for their backward; an output held outside
        # save_for_backward would make a reference cycle through its grad_fn (never freed).
        ctx.save_for_backward(gate, branch, scale, inputs.state.pop("out"))
        return out, y

    @staticmethod
    def backward(ctx, grad_out, grad_y):
        gate, branch, scale, out = ctx.saved_tensors
        ctx.inputs.state["out"] = out.detach()  # (detached: no grad_fn back to this node, no cycle)
        check_once_differentiable("residual_norm_modulate", *(g for g in (grad_out, grad_y) if g is not None),
                                  gate, branch, scale)
        needs = ctx.needs_input_grad
        if grad_y is None:  # only the residual stream is used: the gated add's gradients
            grad_y = torch.zeros_like(branch)
        grad_input, grads = calls.gradients(ctx.backend, ctx.inputs, (grad_out, grad_y), True, True)
        return (grad_input if needs[0] else None, *(g if need else None for g, need in zip(grads, needs[1:5])),
                None, None)


def run_residual_norm_modulate(input: _T, gate: _T, branch: _T, shift: _T, scale: _T, eps: float,
                               backend: Backend) -> tuple[_T, _T]:
    """`residual_norm_modulate` on checked arguments and a resolved backend (what models call per forward)."""
    if torch.compiler.is_compiling():
        return residual_norm_modulate_reference(input, gate, branch, shift, scale, eps)
    inputs = ResidualNormModulateInputs(input, gate, branch, shift, scale, float(eps))
    return _EagerResidualNormModulate.apply(input, gate, branch, shift, scale, inputs, backend)


def residual_norm_modulate(input: _T, gate: _T, branch: _T, shift: _T, scale: _T, eps: float = 1e-6, *,
                           backend: str | None = None) -> tuple[_T, _T]:
    """``out = input + gate[:, None] * branch`` and ``y = F.layer_norm(out, (C,), eps=eps) * (1 +
    scale[:, None]) + shift[:, None]`` in one op.

    Args:
        input, branch: (B, N, C) floating tensors (the residual stream, the attention's or MLP's
            output), C > 0.
        gate, shift, scale: (B, C), input's dtype and device (the adaLN regressions of each sample).
        eps: added to the variance; DiT's norms use 1e-6.
        backend: "native" (the fused CPU kernel), "dense" (ATen), "auto" (default: the faster of
            the two, measured per shape) or None for `EBSPARSE_BACKEND`.
    Returns:
        (out, y), both (B, N, C). Raises TypeError/ValueError naming the bad argument, RuntimeError
        for a backend that cannot run or a second-order gradient.
    """
    if torch.compiler.is_compiling():
        return residual_norm_modulate_reference(input, gate, branch, shift, scale, eps)
    check_gated_residual_args(input, gate, branch)
    check_layer_norm_modulate_args(input, shift, scale, eps)
    inputs = ResidualNormModulateInputs(input, gate, branch, shift, scale, float(eps))
    return run_residual_norm_modulate(input, gate, branch, shift, scale, eps, dispatch.resolve(backend, inputs))
