"""SparseConv2d: nn.Conv2d (groups = 1, zero padding) with a sparse weight."""

from __future__ import annotations

import torch
from torch import nn

from ebsparse.backends.pointwise import dense_conv2d
from ebsparse.nn.pattern import SparsityMixin, masked_weight
from ebsparse.ops.amp import autocast_args, cpu_autocast_off
from ebsparse.ops.block_conv import run_block_conv2d
from ebsparse.ops.block_linear import BlockConv2dInputs
from ebsparse.ops.checks import pair
from ebsparse.ops.conv import check_conv2d_args, run_conv2d
from ebsparse.ops.inputs import Conv2dInputs


def conv_unsupported_reason(conv: nn.Conv2d) -> str | None:
    """Why `conv` cannot become a SparseConv2d, or None."""
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 is supported)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros')"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (explicit padding needed)"
    return None


class SparseConv2d(SparsityMixin, nn.Conv2d):
    """Drop-in nn.Conv2d (same constructor and state dict) plus a `mask` buffer. 2:4 groups run
    along input channels for each (out, kh, kw), so 2:4 needs `in_channels % 4 == 0`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 density: float | None = None, pattern: str = "unstructured", mask: torch.Tensor | None = None,
                 backend: str | None = None, block=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        reason = conv_unsupported_reason(self)
        if reason:
            raise ValueError(f"SparseConv2d: unsupported configuration: {reason}")
        for name, minimum in (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            pair(getattr(self, name), name, minimum)  # nn.Conv2d keeps a float stride until forward fails
        self._init_sparsity(mask, pattern, density, backend, block)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, density: float | None = None, pattern: str = "unstructured",
                   mask: torch.Tensor | None = None, backend: str | None = None, block=None) -> "SparseConv2d":
        """A SparseConv2d holding a copy of `conv`'s parameters, masked by magnitude or `mask`."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected an nn.Conv2d, got {type(conv).__name__}")
        reason = conv_unsupported_reason(conv)
        if reason:
            raise ValueError(f"conv: cannot be made sparse: {reason}")
        w = conv.weight
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, 1, conv.bias is not None, device=w.device, dtype=w.dtype,
                     mask=torch.ones_like(w, dtype=torch.bool), backend=backend)
        module._adopt_dense(conv, pattern, density, mask, block)
        return module

    def to_dense(self) -> nn.Conv2d:
        """An nn.Conv2d with the masked weight."""
        w = self.weight
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, 1, self.bias is not None, device=w.device, dtype=w.dtype)
        return self._export_dense(dense)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern_index()
        op = "block_conv2d" if self.pattern == "block" else "conv2d"
        input, weight, bias = autocast_args(op, self.backend, input, self.weight, self.bias)
        with cpu_autocast_off():
            key = (tuple(input.shape), input.dtype, input.device, weight.dtype)
            backend = self._resolved.get(key) or self._resolve(key, input, pattern, weight, bias)
            if self._plain_dense(backend):
                out = dense_conv2d(input, masked_weight(weight, self.mask, pattern), bias, self.stride, self.padding,
                                   self.dilation)
                return self._trace_plain_dense(op, out)
            run = run_block_conv2d if self.pattern == "block" else run_conv2d
            return run(input, weight, bias, self.mask, pattern, list(self.stride), list(self.padding),
                       list(self.dilation), backend, self.dense_weight_grad)

    def _inputs(self, input: torch.Tensor, pattern, weight: torch.Tensor, bias: torch.Tensor | None) -> Conv2dInputs:
        geometry = check_conv2d_args(input, weight, bias, self.mask, self.stride, self.padding, self.dilation)
        cls = BlockConv2dInputs if self.pattern == "block" else Conv2dInputs
        return cls(input, weight, bias, self.mask, pattern, *geometry)
