"""`layer_norm_modulate`: ``LayerNorm(x) * (1 + scale[:, None]) + shift[:, None]``, DiT's adaLN
modulation of an affine-free LayerNorm, as one op.

Neither half shrinks with the sparse linears around it, and at a DiT's sizes each elementwise pass
over the (B, N, C) activations is a trip to DRAM: ATen runs the norm and the two modulation ops as
three passes forward and five backward (the gradients of scale and shift each a product and a sum
of their own). The native backend (`csrc/cpu/adaln/`) runs one pass each way: per token row the
statistics, then the output; the backward recomputes the normalised row from the input and the
saved statistics, and adds the per-sample sums of shift's and scale's gradients over the tokens as
it goes. The dense backend runs ATen's layer norm and its backward, the modulation unfused.

Eager only: under torch.compile it is the reference formula (the compiler fuses it by itself), so
the kernel ops need no fake kernels.
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
from ebsparse.ops.reference import layer_norm_modulate_reference

__all__ = ["LayerNormModulateInputs", "check_layer_norm_modulate_args", "layer_norm_modulate",
           "run_layer_norm_modulate"]


@dataclass(eq=False, slots=True)
class LayerNormModulateInputs(OnInputTensor):
    """input (B, N, C), shift and scale (B, C); the norm's statistics over C with `eps`. `state`
    holds what the forward keeps for the backward (mean, rstd; the dense backend's normalised
    tensor). The "weight" gradients of `calls.gradients` are (grad_shift, grad_scale)."""

    op: ClassVar[str] = "layer_norm_modulate"
    input: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    eps: float
    dense_weight_grad: bool = False  # calls.gradients reads it; nothing here is sparse
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape),)


def check_layer_norm_modulate_args(input, shift, scale, eps) -> None:
    check_tensor(input, "input", dims=3, floating=True)
    b, _, c = input.shape
    if c == 0:
        raise ValueError(f"input: expected (B, N, C) with C > 0 channels to normalise, got {tuple(input.shape)}")
    for t, name in ((shift, "shift"), (scale, "scale")):
        check_tensor(t, name, dims=2, floating=True)
        check_like(t, input, name, "input")
        if tuple(t.shape) != (b, c):
            raise ValueError(f"{name}: expected shape ({b}, {c}) (input's batch and channels), got {tuple(t.shape)}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")


class _EagerLayerNormModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, shift, scale, inputs: LayerNormModulateInputs, backend: Backend):
        ctx.save_for_backward(input, shift, scale)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        input, shift, scale = ctx.saved_tensors
        check_once_differentiable("layer_norm_modulate", grad_output, input, shift, scale)
        needs = ctx.needs_input_grad
        grad_input, grads = calls.gradients(ctx.backend, ctx.inputs, grad_output, needs[0], needs[1] or needs[2])
        grad_shift, grad_scale = grads if grads is not None else (None, None)
        return (grad_input if needs[0] else None, grad_shift if needs[1] else None,
                grad_scale if needs[2] else None, None, None)


def run_layer_norm_modulate(input: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                            backend: Backend) -> torch.Tensor:
    """`layer_norm_modulate` on checked arguments and a resolved backend (what models call per forward)."""
    if torch.compiler.is_compiling():
        return layer_norm_modulate_reference(input, shift, scale, eps)
    inputs = LayerNormModulateInputs(input, shift, scale, float(eps))
    return _EagerLayerNormModulate.apply(input, shift, scale, inputs, backend)


def layer_norm_modulate(input: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, *,
                        backend: str | None = None) -> torch.Tensor:
    """``F.layer_norm(input, (C,), eps=eps) * (1 + scale[:, None]) + shift[:, None]`` in one op.

    Args:
        input: (B, N, C) floating tensor (B samples of N tokens), C > 0.
        shift, scale: (B, C), input's dtype and device (the adaLN regression of each sample).
        eps: added to the variance; DiT's norms use 1e-6.
        backend: "native" (the fused CPU kernel), "dense" (ATen, unfused), "auto" (default: the
            faster of the two, measured per shape) or None for `EBSPARSE_BACKEND`.
    Returns:
        A (B, N, C) tensor. Raises TypeError/ValueError naming the bad argument, RuntimeError for a
        backend that cannot run or a second-order gradient.
    """
    if torch.compiler.is_compiling():
        return layer_norm_modulate_reference(input, shift, scale, eps)
    check_layer_norm_modulate_args(input, shift, scale, eps)
    inputs = LayerNormModulateInputs(input, shift, scale, float(eps))
    return run_layer_norm_modulate(input, shift, scale, float(eps), dispatch.resolve(backend, inputs))
