"""`block_sparse_conv2d`: conv2d (groups = 1) with a block mask: (bo, bi) blocks of the (out, in)
channel plane, each shared by every (kh, kw) tap (`ebsparse.formats.block` says why). Same contract
as `sparse_conv2d`; eager only (torch.compile raises)."""

from __future__ import annotations

import torch

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.formats.block import BlockIndex
from ebsparse.ops import amp
from ebsparse.ops.block_linear import BlockConv2dInputs, _EagerBlockOp, checked_block_index, refuse_compile
from ebsparse.ops.conv import check_conv2d_args

_T = torch.Tensor


def run_block_conv2d(input: _T, weight: _T, bias: _T | None, mask: _T, pattern: BlockIndex, stride: list[int],
                     padding: list[int], dilation: list[int], backend: Backend, dense_weight_grad: bool = False) -> _T:
    """`block_sparse_conv2d` on checked arguments and a resolved backend (what SparseConv2d calls)."""
    refuse_compile("block_sparse_conv2d")
    inputs = BlockConv2dInputs(input, weight, bias, mask, pattern, stride, padding, dilation, dense_weight_grad)
    return _EagerBlockOp.apply(input, weight, bias, inputs, backend)


def block_sparse_conv2d(input: _T, weight: _T, bias: _T | None, mask: _T, block, stride=1, padding=0, dilation=1, *,
                        index: BlockIndex | None = None, backend: str | None = None,
                        dense_weight_grad: bool = False) -> _T:
    """2-D convolution (groups = 1) with a block-sparse weight.

    Args:
        input: (N, Ci, H, W); weight and mask: (Co, Ci, KH, KW), the mask keeping or dropping whole
            (bo, bi, KH, KW) blocks; bias: (Co,) or None.
        block: (bo, bi), one of `ebsparse.formats.SUPPORTED_BLOCKS`; Co % bo == Ci % bi == 0.
        stride, padding, dilation, index, backend, dense_weight_grad: as in `sparse_conv2d`
            (`index` from `ebsparse.formats.build_block_index(mask, block)`).
    Returns:
        (N, Co, Ho, Wo).
    """
    refuse_compile("block_sparse_conv2d")
    input, weight, bias = amp.autocast_args("block_conv2d", backend, input, weight, bias)
    with amp.cpu_autocast_off():
        stride, padding, dilation = check_conv2d_args(input, weight, bias, mask, stride, padding, dilation)
        pattern = checked_block_index(index, mask, block)
        inputs = BlockConv2dInputs(input, weight, bias, mask, pattern, stride, padding, dilation)
        return run_block_conv2d(input, weight, bias, mask, pattern, stride, padding, dilation,
                                dispatch.resolve(backend, inputs), dense_weight_grad)
