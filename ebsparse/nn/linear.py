"""SparseLinear: nn.Linear whose weight is sparse, run through the `sparse_linear` op."""

from __future__ import annotations

import torch
from torch import nn

from ebsparse.nn.pattern import SparsityMixin
from ebsparse.ops.amp import autocast_args
from ebsparse.ops.block_linear import block_linear_inputs, run_block_linear
from ebsparse.ops.linear import check_linear_args, linear_inputs, run_linear


class SparseLinear(SparsityMixin, nn.Linear):
    """Drop-in nn.Linear (same constructor, `weight`/`bias` names and state dict) plus a `mask`
    buffer. `pattern` is "unstructured" (exact `density`), "2:4" or "block" (with `block=(bo, bi)`:
    exactly round(density * n_blocks) blocks kept); `backend` is None/"auto" (measured, never slower
    than dense) or a backend name."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 density: float | None = None, pattern: str = "unstructured", mask: torch.Tensor | None = None,
                 backend: str | None = None, block=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_sparsity(mask, pattern, density, backend, block)

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, density: float | None = None, pattern: str = "unstructured",
                   mask: torch.Tensor | None = None, backend: str | None = None, block=None) -> "SparseLinear":
        """A SparseLinear holding a copy of `linear`'s parameters, masked by magnitude or `mask`."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device,
                     dtype=w.dtype, mask=torch.ones_like(w, dtype=torch.bool), pattern="unstructured",
                     backend=backend)
        module._adopt_dense(linear, pattern, density, mask, block)
        return module

    def to_dense(self) -> nn.Linear:
        """An nn.Linear with the masked weight (zeros outside the pattern)."""
        w = self.weight
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=w.device, dtype=w.dtype)
        return self._export_dense(dense)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern_index()
        op = "block_linear" if self.pattern == "block" else "linear"
        input, weight, bias = autocast_args(op, self.backend, input, self.weight, self.bias)
        key = (tuple(input.shape), input.dtype, input.device, weight.dtype)
        backend = self._resolved.get(key) or self._resolve(key, input, pattern, weight, bias)
        run = run_block_linear if self.pattern == "block" else run_linear
        return run(input, weight, bias, self.mask, pattern, backend, self.dense_weight_grad)

    def _inputs(self, input: torch.Tensor, pattern, weight: torch.Tensor, bias: torch.Tensor | None):
        check_linear_args(input, weight, bias, self.mask)
        make = block_linear_inputs if self.pattern == "block" else linear_inputs
        return make(input, weight, bias, self.mask, pattern)
