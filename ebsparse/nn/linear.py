"""SparseLinear: nn.Linear whose weight is sparse, run through the `sparse_linear` op."""

from __future__ import annotations

import torch
from torch import nn

from ebsparse.nn.activation import gelu_tanh_act, is_plain_tanh_gelu, observed
from ebsparse.nn.pattern import SparsityMixin
from ebsparse.ops.amp import autocast_args, cpu_autocast_off
from ebsparse.ops.block_linear import block_linear_inputs, run_block_linear
from ebsparse.ops.linear import check_linear_args, linear_inputs, run_linear
from ebsparse.ops.linear_gelu_tanh import run_linear_gelu_tanh
from ebsparse.ops.mlp_gelu_tanh import run_mlp_gelu_tanh


# The fused MLP (`SparseLinear.forward_mlp_gelu_tanh`) hands each thread chunks of up to 128 rows;
# below two chunks per thread the two layers' own ops, parallel over output rows too, balance better.
_MLP_MIN_ROWS_PER_THREAD = 256


class SparseLinear(SparsityMixin, nn.Linear):
    """Drop-in nn.Linear (same constructor, `weight`/`bias` names and state dict) plus a `mask`
    buffer. `pattern` is "unstructured" (exact `density`), "2:4" or "block" (with `block=(bo, bi)`:
    exactly round(density * n_blocks) blocks kept, at least one); `backend` is None/"auto"
    (measured, never slower than dense) or a backend name."""

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
        input, weight, bias = self._autocast(input)
        with cpu_autocast_off():
            pattern, backend = self._prepared(input, weight, bias)
            run = run_block_linear if self.pattern == "block" else run_linear
            return run(input, weight, bias, self.mask, pattern, backend, self.dense_weight_grad)

    def forward_gelu_tanh(self, input: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """``act(self(input))`` for a model's tanh GELU `act`, in one fused op
        (`sparse_linear_gelu_tanh`) where this layer resolves to the native backend for `input` on
        the CPU in eager mode, for an unstructured pattern without the full weight gradient, and
        `act` is a plain unobserved ``nn.GELU(approximate="tanh")``; otherwise this layer's op and
        then `gelu_tanh_act(act, ...)`, as the unfused MLP runs them."""
        input, weight, bias = self._autocast(input)
        with cpu_autocast_off():
            pattern, backend = self._prepared(input, weight, bias)
            if (backend.name == "native" and self.pattern == "unstructured" and not self.dense_weight_grad
                    and input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)
                    and is_plain_tanh_gelu(act) and not torch.compiler.is_compiling()):
                return run_linear_gelu_tanh(input, weight, bias, self.mask, pattern, backend)
            run = run_block_linear if self.pattern == "block" else run_linear
            out = run(input, weight, bias, self.mask, pattern, backend, self.dense_weight_grad)
        return gelu_tanh_act(act, out)

    def forward_mlp_gelu_tanh(self, input: torch.Tensor, act: nn.Module, fc2: "SparseLinear") -> torch.Tensor | None:
        """``fc2(act(self(input)))`` as one fused op (`sparse_mlp_gelu_tanh`), or None where the
        fusion does not apply: both layers unstructured, native on this CPU input in eager mode
        (fc2 as its own calls already resolved for this shape: the first call of a shape runs
        unfused and resolves it), neither taking the full weight gradient, `act` a plain tanh GELU,
        and at least `_MLP_MIN_ROWS_PER_THREAD` rows per thread (the fused op parallelises over
        chunks of rows only)."""
        if (self.pattern != "unstructured" or fc2.pattern != "unstructured" or self.dense_weight_grad
                or fc2.dense_weight_grad or input.device.type != "cpu" or torch.compiler.is_compiling()
                or not is_plain_tanh_gelu(act)
                or input.numel() < _MLP_MIN_ROWS_PER_THREAD * torch.get_num_threads() * self.in_features):
            return None
        input, weight, bias = self._autocast(input)
        with cpu_autocast_off():
            pattern, backend = self._prepared(input, weight, bias)
            pattern2 = fc2.pattern_index()  # first: a changed mask clears fc2's resolved backends
            hidden_key = (tuple(input.shape[:-1]) + (self.out_features,), input.dtype, input.device,
                          fc2.weight.dtype)
            if (backend.name != "native" or getattr(fc2._resolved.get(hidden_key), "name", None) != "native"
                    or input.dtype not in (torch.float32, torch.float64) or fc2.weight.dtype != input.dtype):
                return None
            return run_mlp_gelu_tanh(input, weight, bias, self.mask, pattern, fc2.weight, fc2.bias, fc2.mask,
                                     pattern2, backend)

    def _autocast(self, input: torch.Tensor):
        """(input, weight, bias) as the op runs them under the current autocast state."""
        op = "block_linear" if self.pattern == "block" else "linear"
        return autocast_args(op, self.backend, input, self.weight, self.bias)

    def _prepared(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """The pattern index and the backend resolved for this input's shape (`_autocast`'s
        arguments; the backend is measured on the first call of a shape)."""
        pattern = self.pattern_index()
        key = (tuple(input.shape), input.dtype, input.device, weight.dtype)
        backend = self._resolved.get(key) or self._resolve(key, input, pattern, weight, bias)
        return pattern, backend

    def _inputs(self, input: torch.Tensor, pattern, weight: torch.Tensor, bias: torch.Tensor | None):
        check_linear_args(input, weight, bias, self.mask)
        make = block_linear_inputs if self.pattern == "block" else linear_inputs
        return make(input, weight, bias, self.mask, pattern)


def linear_gelu_tanh(fc1: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(fc1(x))`` for an MLP's first layer and its tanh GELU: `SparseLinear.forward_gelu_tanh`
    (one fused op where it can) for an unobserved SparseLinear, else ``gelu_tanh_act(act, fc1(x))``
    (a dense nn.Linear, or a layer with hooks, which must see its own call)."""
    if type(fc1) is SparseLinear and not observed(fc1):
        return fc1.forward_gelu_tanh(x, act)
    return gelu_tanh_act(act, fc1(x))


def mlp_gelu_tanh(fc1: nn.Module, act: nn.Module, fc2: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``fc2(act(fc1(x)))`` for a transformer MLP with a tanh GELU: one fused op for two unobserved
    SparseLinear layers where `SparseLinear.forward_mlp_gelu_tanh` applies, else
    ``fc2(linear_gelu_tanh(fc1, act, x))`` (layers with hooks must see their own calls)."""
    if type(fc1) is SparseLinear and type(fc2) is SparseLinear and not observed(fc1) and not observed(fc2):
        fused = fc1.forward_mlp_gelu_tanh(x, act, fc2)
        if fused is not None:
            return fused
    return fc2(linear_gelu_tanh(fc1, act, x))
