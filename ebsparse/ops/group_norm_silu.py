"""`group_norm_silu`: silu(group_norm(x)), the norm-then-activation of every U-Net ResNet block.

Both halves are bound by memory traffic, and neither shrinks with the sparse convolutions around
them, so they limit a sparse or channel-pruned step. Fused, the forward writes one tensor instead of
two (no normalised tensor for SiLU to read back) and the backward recomputes the normalised value
from the input and the saved statistics (the native CPU kernel, `csrc/cpu/norm/`). The dense
backend runs ATen's group norm and SiLU, the same maths unfused.

Same two ways in as the layer ops: a plain autograd.Function in eager mode, the custom ops
`ebsparse::group_norm_silu` / `group_norm_silu_backward` under torch.compile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ebsparse.backends import dispatch, registry
from ebsparse.backends.base import Backend
from ebsparse.ops import calls
from ebsparse.ops.checks import check_like, check_once_differentiable, check_tensor
from ebsparse.ops.inputs import OnInputTensor

_T = torch.Tensor


@dataclass(eq=False, slots=True)
class GroupNormSiluInputs(OnInputTensor):
    """input (N, C, *), weight and bias (C,) or None; statistics over num_groups groups of channels.
    `state` holds what the forward keeps for the backward (mean, rstd; the dense backend's
    normalised tensor)."""

    op: ClassVar[str] = "group_norm_silu"
    input: torch.Tensor
    num_groups: int
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    dense_weight_grad: bool = False  # calls.gradients reads it; a norm has no sparse weight
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape), self.num_groups, self.weight is not None, self.bias is not None)


def check_group_norm_silu_args(input, num_groups, weight, bias, eps) -> None:
    check_tensor(input, "input", floating=True)
    if input.dim() < 2:
        raise ValueError(f"input: expected (N, C, ...), got shape {tuple(input.shape)}")
    channels = input.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
        raise ValueError(f"num_groups: expected a positive divisor of the {channels} channels, got {num_groups!r}")
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None:
            check_tensor(t, name, dims=1, floating=True)
            check_like(t, input, name, "input")
            if t.shape[0] != channels:
                raise ValueError(f"{name}: expected shape ({channels},), got {tuple(t.shape)}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")


def _gradients(backend, inputs, grad_output, needs):
    """(grad_input, grad_weight, grad_bias) through `calls.gradients`, trimmed to what autograd asks."""
    grad_input, grads = calls.gradients(backend, inputs, grad_output, needs[0], any(needs[1:]))
    grad_weight, grad_bias = grads if grads is not None else (None, None)
    return (grad_input if needs[0] else None, grad_weight if needs[1] and inputs.weight is not None else None,
            grad_bias if needs[2] and inputs.bias is not None else None)


# ---- eager: a plain autograd.Function ------------------------------------------------------------

class _EagerGroupNormSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, inputs: GroupNormSiluInputs, backend: Backend):
        ctx.save_for_backward(input)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        check_once_differentiable("group_norm_silu", grad_output, input)
        return (*_gradients(ctx.backend, ctx.inputs, grad_output, ctx.needs_input_grad[:3]), None, None)


# ---- traced: torch.library custom ops ------------------------------------------------------------

@torch.library.custom_op("ebsparse::group_norm_silu", mutates_args=())
def _group_norm_silu_op(input: _T, num_groups: int, weight: _T | None, bias: _T | None, eps: float,
                        backend: str) -> _T:
    return calls.forward(registry.get_backend(backend), GroupNormSiluInputs(input, num_groups, weight, bias, eps))


@torch.library.custom_op("ebsparse::group_norm_silu_backward", mutates_args=())
def _group_norm_silu_backward_op(grad_output: _T, input: _T, num_groups: int, weight: _T | None, bias: _T | None,
                                 eps: float, backend: str) -> tuple[_T, _T, _T]:
    """(grad-input, grad-weight, grad-bias), recomputing the forward's statistics; empty tensors for
    a missing weight or bias."""
    inputs = GroupNormSiluInputs(input, num_groups, weight, bias, eps)
    b = registry.get_backend(backend)
    with torch.no_grad():
        calls.forward(b, inputs)  # the statistics the backward reads
    grad_input, grad_weight, grad_bias = _gradients(b, inputs, grad_output, (True, True, True))
    empty = grad_output.new_empty(0)
    return grad_input, grad_weight if grad_weight is not None else empty, grad_bias if grad_bias is not None else empty


@_group_norm_silu_op.register_fake
def _(input, num_groups, weight, bias, eps, backend):
    return torch.empty_like(input)


@_group_norm_silu_backward_op.register_fake
def _(grad_output, input, num_groups, weight, bias, eps, backend):
    channels = (input.shape[1],)
    return (torch.empty_like(input), input.new_empty(channels if weight is not None else (0,)),
            input.new_empty(channels if bias is not None else (0,)))


def _setup_context(ctx, inputs, output):
    input, num_groups, weight, bias, eps, backend = inputs
    ctx.save_for_backward(input, weight, bias)
    ctx.args = (num_groups, eps, backend)


def _traced_backward(ctx, grad_output):
    input, weight, bias = ctx.saved_tensors
    num_groups, eps, backend = ctx.args
    check_once_differentiable("group_norm_silu", grad_output, input)
    grad_input, grad_weight, grad_bias = _group_norm_silu_backward_op(grad_output, input, num_groups, weight, bias,
                                                                      eps, backend)
    return (grad_input, None, grad_weight if weight is not None else None,
            grad_bias if bias is not None else None, None, None)


_group_norm_silu_op.register_autograd(_traced_backward, setup_context=_setup_context)


# ---- entry points --------------------------------------------------------------------------------

def run_group_norm_silu(input: _T, num_groups: int, weight: _T | None, bias: _T | None, eps: float,
                        backend: Backend) -> _T:
    """`group_norm_silu` on checked arguments and a resolved backend (what modules call per forward)."""
    if torch.compiler.is_compiling():
        return _group_norm_silu_op(input, num_groups, weight, bias, eps, backend.name)
    inputs = GroupNormSiluInputs(input, num_groups, weight, bias, eps)
    return _EagerGroupNormSilu.apply(input, weight, bias, inputs, backend)


def group_norm_silu(input: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5, *, backend: str | None = None) -> torch.Tensor:
    """``F.silu(F.group_norm(input, num_groups, weight, bias, eps))`` in one op.

    Args:
        input: (N, C, ...) floating tensor.
        num_groups: a divisor of C.
        weight, bias: (C,) or None (the norm's affine parameters).
        eps: added to the variance.
        backend: "native" (the fused CPU kernel), "dense" (ATen, unfused), "auto" (default: the
            faster of the two, measured per shape) or None for `EBSPARSE_BACKEND`.
    Returns:
        A tensor like `input`. Raises TypeError/ValueError naming the bad argument, RuntimeError for a
        backend that cannot run or a second-order gradient.
    """
    if torch.compiler.is_compiling():
        name = backend if backend not in (None, "auto") else "dense"
        return run_group_norm_silu(input, num_groups, weight, bias, float(eps), registry.get_backend(name))
    check_group_norm_silu_args(input, num_groups, weight, bias, eps)
    inputs = GroupNormSiluInputs(input, num_groups, weight, bias, float(eps))
    return run_group_norm_silu(input, num_groups, weight, bias, float(eps), dispatch.resolve(backend, inputs))
