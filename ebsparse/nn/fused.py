"""One sparse kernel call for several convolutions of one input (a U-Net attention's q, k, v).

The layers stay what they are: their own weights, biases and masks, their own state-dict names,
their own exact kept counts (what the s2s sparsifiers, RigL and the pruning recipes see). Only the
call is shared: the weights, biases and masks are stacked along the output channels, the stacked
pattern's index is built once per change of any mask, and one `sparse_conv2d` runs; autograd's
`cat` hands each layer its rows of the weight gradient. A stacked mask is exactly the three masks
one after the other, so each layer's rows keep their own density.

Fusion needs layers of one kind: SparseConv2d modules with one pattern (and block), one backend
setting, one geometry, biases on all or none, one dtype and device, and the same
``dense_weight_grad`` (RigL sets it on every layer at once). Anything else, and
torch.compile (where the stacked index would have to be traced), runs the layers one by one. Where
the stacked call resolves to the dense backend, 1x1 layers run as one batched product of their
stacked masked weights (`ebsparse.backends.pointwise`), other kernels layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ebsparse.backends import dispatch
from ebsparse.backends.pointwise import is_pointwise, pointwise_conv2d
from ebsparse.nn.conv import SparseConv2d
from ebsparse.nn.mask_state import current_index, mask_state
from ebsparse.nn.pattern import masked_weight
from ebsparse.ops.amp import autocast_args, cpu_autocast_off
from ebsparse.ops.block_conv import run_block_conv2d
from ebsparse.ops.block_linear import BlockConv2dInputs
from ebsparse.ops.conv import check_conv2d_args, run_conv2d
from ebsparse.ops.inputs import Conv2dInputs

__all__ = ["StackedConv2d", "run_stacked", "stack_unsupported_reason"]


def stack_unsupported_reason(convs: Sequence[torch.nn.Module]) -> str | None:
    """Why `convs` cannot run as one stacked call, or None."""
    first = convs[0]
    if not all(type(c) is SparseConv2d for c in convs):
        return "not all SparseConv2d"
    # dense_weight_grad too: one call computes the full weight gradient for all or none (RigL asks it of
    # every layer on its update steps, so they stack then as well).
    for attr in ("pattern", "block", "backend", "in_channels", "kernel_size", "stride", "padding", "dilation",
                 "dense_weight_grad"):
        if any(getattr(c, attr) != getattr(first, attr) for c in convs):
            return f"their {attr} differ"
    if len({c.bias is None for c in convs}) > 1:
        return "some have a bias and some do not"
    if len({(c.weight.dtype, c.weight.device) for c in convs}) > 1:
        return "their weights' dtypes or devices differ"
    return None


class StackedConv2d:
    """Runs a fixed sequence of same-input SparseConv2d layers as one call; holds the stacked mask,
    its index and the resolved backends (per input shape) between calls. Not a module: it owns no
    parameters or state, and a model that holds one saves and loads exactly as before."""

    def __init__(self):
        self._indices: tuple | None = None  # the layers' pattern indices the stacked mask was made from
        self._mask: torch.Tensor | None = None
        self._resolved: dict[tuple, object] = {}

    def __call__(self, convs: Sequence[SparseConv2d], input: torch.Tensor, *, split: bool = True
                 ) -> list[torch.Tensor]:
        """The layers' outputs, as ``[conv(input) for conv in convs]`` computes them, from one call.
        With ``split=False`` the stacked output comes back whole, as a one-element list, where the
        call was one (a resolved dense backend runs the layers one by one and returns their outputs).
        Raises ValueError if they cannot be stacked (see `stack_unsupported_reason`)."""
        reason = stack_unsupported_reason(convs)
        if reason:
            raise ValueError(f"convs: cannot run as one call: {reason}")
        first = convs[0]
        indices = tuple(c.pattern_index() for c in convs)
        if self._indices is None or any(a is not b for a, b in zip(indices, self._indices)):
            self._mask = torch.cat([c.mask for c in convs])
            self._indices = indices
            self._resolved.clear()  # another density may favour another backend
        mask = self._mask
        if first.pattern == "block":
            pattern = mask_state(mask).block_index(mask, first.block, "StackedConv2d")
        else:
            pattern = current_index(mask, "StackedConv2d")
        op = "block_conv2d" if first.pattern == "block" else "conv2d"
        weight = torch.cat([c.weight for c in convs])
        bias = torch.cat([c.bias for c in convs]) if first.bias is not None else None
        input, weight, bias = autocast_args(op, first.backend, input, weight, bias)
        with cpu_autocast_off():
            geometry = list(first.stride), list(first.padding), list(first.dilation)
            dense_weight_grad = first.dense_weight_grad  # RigL's update step
            key = (tuple(input.shape), input.dtype, input.device, weight.dtype)
            backend = self._resolved.get(key)
            if backend is None:
                cls = BlockConv2dInputs if first.pattern == "block" else Conv2dInputs
                checked = check_conv2d_args(input, weight, bias, mask, *geometry)
                backend = self._resolved[key] = dispatch.resolve(first.backend, cls(input, weight, bias, mask, pattern,
                                                                                    *checked))
            if backend.name == "dense" and not dense_weight_grad:
                if is_pointwise(input, weight, first.stride, first.padding):
                    # 1x1 layers as the batched products of their stacked masked weights: one product per
                    # image and phase instead of one per layer, and the layers' input gradients come out
                    # summed (at the digits U-Net's attention, 64 channels, 8x8, batch 32: 1.77 ms forward
                    # + backward against 2.15 ms for three layers, 1 thread).
                    weights = torch.cat([masked_weight(c.weight, c.mask, index) for c, index in zip(convs, indices)])
                    out = SparseConv2d._trace_plain_dense(op, pointwise_conv2d(input, weights.to(weight.dtype), bias))
                    return list(out.split([c.out_channels for c in convs], dim=1)) if split else [out]
                # A stacked oneDNN convolution was slower than three (and its weight concatenation and
                # output split add copies both ways): each layer runs its own plain dense path.
                return [conv(input) for conv in convs]
            run = run_block_conv2d if first.pattern == "block" else run_conv2d
            out = run(input, weight, bias, mask, pattern, *geometry, backend, dense_weight_grad)
            return list(out.split([c.out_channels for c in convs], dim=1)) if split else [out]


def run_stacked(stack: StackedConv2d | None, convs: Sequence[torch.nn.Module], input: torch.Tensor, *,
                split: bool = True) -> list[torch.Tensor]:
    """``[conv(input) for conv in convs]``: one stacked call where the layers allow it and `stack` is
    given, outside torch.compile; the layers one by one otherwise. ``split=False``: a stacked call's
    output whole, as a one-element list (a consumer of all of it saves the split's backward, which
    concatenates the layers' gradients)."""
    if stack is not None and not torch.compiler.is_compiling() and stack_unsupported_reason(convs) is None:
        return stack(convs, input, split=split)
    return [conv(input) for conv in convs]
