"""One inputs object per op: what a backend kernel is handed (tensors, geometry, the pattern by
field name), plus what automatic dispatch keys its timing on.

`state` is where a backend's forward keeps what its backward reuses (the dense backend's masked
weight), for the one call the object describes; a linear or conv backward that makes the bias
gradient with the weight's (the native CPU ones) leaves it there as "grad_bias" for the op to return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ebsparse.backends.base import conv2d_output_size
from ebsparse.formats.index import PatternIndex


class OnInputTensor:
    """``device`` and ``dtype`` of an op's inputs object: those of its ``input`` tensor."""

    __slots__ = ()

    @property
    def device(self) -> torch.device:
        return self.input.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input.dtype


@dataclass(eq=False, slots=True)
class LinearInputs(OnInputTensor):
    """`sparse_linear`: input (N, K), weight and mask (M, K), bias (M,) or None."""

    op: ClassVar[str] = "linear"
    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    pattern: PatternIndex
    dense_weight_grad: bool = False
    state: dict = field(default_factory=dict)

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape), tuple(self.weight.shape), round(self.pattern.density, 2),
                self.bias is not None)


@dataclass(eq=False, slots=True)
class Conv2dInputs(OnInputTensor):
    """`sparse_conv2d`: input (N, Ci, H, W), weight and mask (Co, Ci, KH, KW), bias (Co,) or None;
    stride, padding and dilation as [h, w] lists."""

    op: ClassVar[str] = "conv2d"
    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    pattern: PatternIndex
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    dense_weight_grad: bool = False
    state: dict = field(default_factory=dict)

    def output_shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.input.shape
        co, _, kh, kw = self.weight.shape
        return (n, co, conv2d_output_size(h, kh, self.stride[0], self.padding[0], self.dilation[0]),
                conv2d_output_size(w, kw, self.stride[1], self.padding[1], self.dilation[1]))

    def tuning_key(self) -> tuple:
        return (tuple(self.input.shape), tuple(self.weight.shape), tuple(self.stride), tuple(self.padding),
                tuple(self.dilation), round(self.pattern.density, 2), self.bias is not None)
