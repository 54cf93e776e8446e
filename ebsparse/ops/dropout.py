"""`dropout`: ``F.dropout(x, p, training)`` on a counter-based generator.

ATen's CPU dropout draws every element from torch's Mersenne Twister (`bernoulli_`, ~8 ns per
element on one core), 11-15% of a sparse DDPM U-Net training step. The native backend runs
`csrc/cpu/activation/dropout.cpp`: Philox4x32-10 keyed by one 64-bit draw from torch's generator,
keep mask and scaled output in one vectorised pass, a bit mask kept for the backward. The dense
backend runs ATen's Bernoulli on a generator seeded with the same draw. Either way a call takes
exactly one draw from torch's generator, so `torch.manual_seed` and a restored RNG state reproduce
it. The random stream differs from ATen's `F.dropout` (same distribution, other bits).

The backend is not timed: `auto` takes the native kernel wherever it runs (a timing run would
only confirm it, ~10x faster than ATen at U-Net sizes, bench/NOTES.md). Eager only: under
torch.compile `dropout` is ATen's.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.ops import calls
from ebsparse.ops.checks import check_once_differentiable, check_tensor
from ebsparse.ops.inputs import OnInputTensor

__all__ = ["DropoutInputs", "dropout", "draw_seed", "run_dropout"]


@dataclass(eq=False, slots=True)
class DropoutInputs(OnInputTensor):
    """input of any shape, drop probability p in (0, 1], and the generator's seed for this call."""

    op: ClassVar[str] = "dropout"
    input: torch.Tensor
    p: float
    seed: int
    dense_weight_grad: bool = False
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape),)


def draw_seed(generator: torch.Generator | None = None) -> int:
    """One 63-bit draw from `generator` (torch's default CPU generator when None)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator))


def keep_scale(p: float) -> float:
    """What a kept element is multiplied by: 1 / (1 - p); 0 when nothing is kept (p = 1)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


class _EagerDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, inputs: DropoutInputs, backend: Backend):
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        check_once_differentiable("dropout", grad_output)
        grad_input, _ = calls.gradients(ctx.backend, ctx.inputs, grad_output, True, False)
        return grad_input, None, None


def run_dropout(input: torch.Tensor, p: float, backend: Backend, generator: torch.Generator | None = None):
    """`dropout` in training mode on a checked input and p in (0, 1] and a resolved backend (what
    modules call per forward)."""
    return _EagerDropout.apply(input, DropoutInputs(input, p, draw_seed(generator)), backend)


def check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
    return float(p)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, *,
            generator: torch.Generator | None = None, backend: str | None = None) -> torch.Tensor:
    """``F.dropout(input, p, training)``: each element zeroed with probability p, the others
    multiplied by 1 / (1 - p) (in the input's dtype, as ATen does).

    Args:
        input: floating tensor of any shape.
        p: drop probability in [0, 1]. p = 0, ``training=False`` or an empty input return `input`
            itself and draw nothing (as ATen); p = 1 gives zeros.
        generator: the torch.Generator the call's seed is drawn from (one draw); None: torch's
            default CPU generator.
        backend: "native" (the CPU kernel), "dense" (ATen's Bernoulli), "auto" (default: native
            where it runs) or None for `EBSPARSE_BACKEND`.
    Returns a tensor like `input`. Raises ValueError naming a bad `p`, TypeError naming a
    non-floating `input`, RuntimeError for a backend that cannot run or a second-order gradient.
    """
    p = check_p(p)
    if torch.compiler.is_compiling():
        return F.dropout(input, p, training)
    check_tensor(input, "input", floating=True)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    resolved = dispatch.resolve_untimed(backend, "dropout", input.device, input.dtype)
    return run_dropout(input, p, resolved, generator)


def _register_kernel_ops() -> None:
    """Fake kernels and autograd for the native kernel ops (`ebsparse::dropout` returns (output,
    bit mask); its backward reads the mask), so they pass opcheck and trace like any op."""
    from ebsparse.backends.extension import extension_error

    if extension_error() is not None:
        return

    @torch.library.register_fake("ebsparse::dropout")
    def _(input, p, seed):
        return torch.empty_like(input), input.new_empty(((input.numel() + 7) // 8,), dtype=torch.uint8)

    @torch.library.register_fake("ebsparse::dropout_backward")
    def _(grad_output, mask, p):
        return torch.empty_like(grad_output)

    def setup_context(ctx, inputs, output):
        ctx.p = inputs[1]
        ctx.save_for_backward(output[1])
        ctx.set_materialize_grads(True)

    def backward(ctx, grad_output, grad_mask):
        (mask,) = ctx.saved_tensors
        return torch.ops.ebsparse.dropout_backward(grad_output, mask, ctx.p), None, None

    torch.library.register_autograd("ebsparse::dropout", backward, setup_context=setup_context)


_register_kernel_ops()
