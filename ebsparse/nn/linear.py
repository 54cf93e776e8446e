"""SparseLinear: nn.Linear whose weight is sparse, run through the `sparse_linear` op."""

from __future__ import annotations

import torch
from torch import nn

from ebsparse.nn.pattern import SparsityMixin
from ebsparse.ops.amp import autocast_args
from ebsparse.ops.linear import check_linear_args, linear_inputs, run_linear


class SparseLinear(SparsityMixin, nn.Linear):
    """Drop-in nn.Linear (same constructor, `weight`/`bias` names and state dict) plus a `mask`
    buffer. `pattern` is "unstructured" (exact `density`) or "2:4"; `backend` is None/"auto"
    (measured, never slower than dense) or a backend name."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 density: float | None = None, pattern: str = "unstructured", mask: torch.Tensor | None = None,
                 backend: str | None = None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_sparsity(mask, pattern, density, backend)

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, density: float | None = None, pattern: str = "unstructured",
                   mask: torch.Tensor | None = None, backend: str | None = None) -> "SparseLinear":
        """A SparseLinear holding a copy of `linear`'s parameters, masked by magnitude or `mask`."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device,
                     dtype=w.dtype, mask=torch.ones_like(w, dtype=torch.bool), pattern="unstructured",
                     backend=backend)
        module._adopt_dense(linear, pattern, density, mask)
        return module

    def to_dense(self) -> nn.Linear:
        """An nn.Linear with the masked weight (zeros outside the pattern)."""
        w = self.weight
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=w.device, dtype=w.dtype)
        return self._export_dense(dense)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern_index()
        input, weight, bias = autocast_args("linear", self.backend, input, self.weight, self.bias)
        key = (tuple(input.shape), input.dtype, input.device, weight.dtype)
        backend = self._resolved.get(key) or self._resolve(key, input, pattern, weight, bias)
        return run_linear(input, weight, bias, self.mask, pattern, backend, self.dense_weight_grad)

    def _inputs(self, input: torch.Tensor, pattern, weight: torch.Tensor, bias: torch.Tensor | None):
        check_linear_args(input, weight, bias, self.mask)
        return linear_inputs(input, weight, bias, self.mask, pattern)
