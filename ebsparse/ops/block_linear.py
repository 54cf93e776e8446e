"""`block_sparse_linear`: y = x (W o mask)^T + b with a block mask (weights kept in dense (bo, bi)
blocks, `ebsparse.formats.block`), grad-weight at kept blocks only.

The same contract as `sparse_linear` (dropped weights contribute exactly zero; a weight gradient
exactly zero off the pattern unless `dense_weight_grad`; differentiable once), with its own op name
so backends without block kernels simply lack it. Eager only: under torch.compile it raises
(nothing traces the block index yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.formats.block import BlockIndex, build_block_index, check_block, check_block_mask
from ebsparse.ops import amp, calls
from ebsparse.ops.checks import check_once_differentiable
from ebsparse.ops.inputs import Conv2dInputs, LinearInputs
from ebsparse.ops.linear import check_linear_args

_T = torch.Tensor


@dataclass(eq=False, slots=True)
class BlockLinearInputs(LinearInputs):
    """`block_sparse_linear`: as LinearInputs, `pattern` a BlockIndex."""

    op: ClassVar[str] = "block_linear"

    def tuning_key(self) -> tuple:
        return LinearInputs.tuning_key(self) + (self.pattern.block,)


@dataclass(eq=False, slots=True)
class BlockConv2dInputs(Conv2dInputs):
    """`block_sparse_conv2d`: as Conv2dInputs, `pattern` a BlockIndex."""

    op: ClassVar[str] = "block_conv2d"

    def tuning_key(self) -> tuple:
        return Conv2dInputs.tuning_key(self) + (self.pattern.block,)


class _EagerBlockOp(torch.autograd.Function):
    """Both block ops: forward and gradients through the backend's kernels (`calls`)."""

    @staticmethod
    def forward(ctx, input, weight, bias, inputs, backend: Backend):
        ctx.save_for_backward(input, weight)  # only for autograd's in-place edit check
        ctx.inputs, ctx.backend = inputs, backend
        return calls.forward(backend, inputs)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        check_once_differentiable(f"{ctx.inputs.op}", grad_output, input, weight)
        grad_input, grad_weight = calls.gradients(ctx.backend, ctx.inputs, grad_output, *ctx.needs_input_grad[:2])
        grad_bias = calls.bias_gradient(ctx.inputs, grad_output) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None


def refuse_compile(op: str) -> None:
    if torch.compiler.is_compiling():
        raise RuntimeError(f"{op}: block patterns run eagerly only; torch.compile cannot trace them yet "
                           "(compile the model without block-sparse layers, or run it eagerly)")


def checked_block_index(index, mask: torch.Tensor, block) -> BlockIndex:
    """`index` when it describes `mask` with `block`, else a new index (raising for a foreign one)."""
    block = check_block(block)
    if index is None:
        check_block_mask(mask, block)
        return build_block_index(mask, block)
    if not isinstance(index, BlockIndex):
        raise TypeError(f"index: expected a BlockIndex (ebsparse.formats.build_block_index(mask, block)) or None, "
                        f"got {type(index).__name__}")
    if index.block != block or not index.describes(mask):
        raise ValueError("index: does not describe `mask` with this block shape (built from another mask or block, "
                         "or before the mask changed); rebuild it with ebsparse.formats.build_block_index(mask, block)")
    return index


def run_block_linear(input: _T, weight: _T, bias: _T | None, mask: _T, pattern: BlockIndex, backend: Backend,
                     dense_weight_grad: bool = False) -> _T:
    """`block_sparse_linear` on checked arguments and a resolved backend (what SparseLinear calls)."""
    refuse_compile("block_sparse_linear")
    x2d = input if input.dim() == 2 else input.reshape(-1, weight.shape[1])
    inputs = BlockLinearInputs(x2d, weight, bias, mask, pattern, dense_weight_grad)
    out = _EagerBlockOp.apply(x2d, weight, bias, inputs, backend)
    return out if input.dim() == 2 else out.reshape(*input.shape[:-1], weight.shape[0])


def block_linear_inputs(input: _T, weight: _T, bias: _T | None, mask: _T, pattern: BlockIndex) -> BlockLinearInputs:
    return BlockLinearInputs(input.reshape(-1, weight.shape[1]), weight, bias, mask, pattern)


def block_sparse_linear(input: _T, weight: _T, bias: _T | None, mask: _T, block, *, index: BlockIndex | None = None,
                        backend: str | None = None, dense_weight_grad: bool = False) -> _T:
    """Linear layer with a block-sparse weight.

    Args:
        input: (*, K); weight and mask: (M, K), the mask keeping or dropping whole `block` blocks;
        bias: (M,) or None.
        block: (bo, bi), one of `ebsparse.formats.SUPPORTED_BLOCKS`; M % bo == K % bi == 0.
        index: `ebsparse.formats.build_block_index(mask, block)`, to avoid rebuilding it per call.
        backend, dense_weight_grad: as in `sparse_linear`.
    Returns:
        (*, M). Raises TypeError/ValueError naming the bad argument before any kernel runs.
    """
    refuse_compile("block_sparse_linear")
    input, weight, bias = amp.autocast_args("block_linear", backend, input, weight, bias)
    with amp.cpu_autocast_off():
        check_linear_args(input, weight, bias, mask)
        pattern = checked_block_index(index, mask, block)
        chosen = dispatch.resolve(backend, block_linear_inputs(input, weight, bias, mask, pattern))
        return run_block_linear(input, weight, bias, mask, pattern, chosen, dense_weight_grad)
