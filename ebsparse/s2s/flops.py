"""FLOPs of sparse training and inference, following Evci et al. (RigL), normalised to dense.

A forward pass costs f = 2 · MACs (the papers' counter of :mod:`ebsparse.metrics.counting`, plus
recurrent layers, which it does not count). For the sparse model, the weight MACs of each
sparsified layer scale with its density; biases, norms and attention matmuls do not. Per training
step (forward, grad-input, grad-weight): dense 3·f_D; Static and MagRan 3·f_S; RigL
(3·f_S·ΔT + 2·f_S + f_D) / (ΔT + 1), since every ΔT steps it computes the dense gradient. These count
work; the measured speed-up of the sparse kernels is reported beside them, not derived from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ebsparse.metrics.counting import count_macs

__all__ = ["LayerFlops", "FlopsReport", "flops_report", "train_flops_per_step", "densities_of"]

_GATES = {nn.GRU: 3, nn.LSTM: 4, nn.RNN: 1}


@dataclass
class LayerFlops:
    """One sparsified weight: its forward weight-FLOPs dense and at its density."""

    name: str
    density: float
    dense: float
    sparse: float


@dataclass
class FlopsReport:
    """Forward FLOPs of one call (e.g. one image, one denoising step), dense and sparse."""

    dense_forward: float
    sparse_forward: float
    layers: list[LayerFlops] = field(default_factory=list)
    # Forward FLOPs of every Linear / Conv / RNN weight, dense: the work sparsity can shrink (the
    # totals above also hold attention products and norms, which it cannot)
    dense_weights: float = 0.0

    @property
    def test_ratio(self) -> float:
        """Inference FLOPs of the sparse model over the dense model's (the paper's Test FLOPs)."""
        return self.sparse_forward / self.dense_forward

    @property
    def weight_ratio(self) -> float:
        """The weights' forward FLOPs at their densities over dense: `test_ratio` without the work no
        weight takes part in (the kernels' share of the model's work, e.g. bench/breakdown.py's)."""
        if self.dense_weights <= 0:
            raise ValueError("weight_ratio: dense_weights is 0: no Linear / Conv / RNN weight took part in the "
                             "forward pass (or the report was built without it)")
        saved = self.dense_forward - self.sparse_forward
        return (self.dense_weights - saved) / self.dense_weights

    def train_ratio(self, method: str, update_every: int | None = None) -> float:
        """Training FLOPs per step over dense training's (the paper's Train FLOPs)."""
        return train_flops_per_step(method, self.sparse_forward, self.dense_forward, update_every) / (
            3 * self.dense_forward)

    def table(self) -> str:
        lines = ["| layer | density | dense MFLOPs | sparse MFLOPs |", "|---|---|---|---|"]
        lines += [f"| {layer.name} | {layer.density:.4f} | {layer.dense / 1e6:.3f} | {layer.sparse / 1e6:.3f} |"
                  for layer in self.layers]
        lines.append(f"| **total forward** | {self.test_ratio:.4f} | {self.dense_forward / 1e6:.3f} | "
                     f"{self.sparse_forward / 1e6:.3f} |")
        return "\n".join(lines)


def train_flops_per_step(method: str, f_sparse: float, f_dense: float, update_every: int | None = None) -> float:
    """Evci et al.: 3·f_D dense, 3·f_S static/random growth, (3 f_S ΔT + 2 f_S + f_D)/(ΔT + 1) RigL."""
    if method == "dense":
        return 3 * f_dense
    if method in ("static", "magran"):
        return 3 * f_sparse
    if method == "rigl":
        if not update_every or update_every < 1:
            raise ValueError(f"update_every: RigL's training FLOPs need ΔT >= 1, got {update_every!r}")
        return (3 * f_sparse * update_every + 2 * f_sparse + f_dense) / (update_every + 1)
    raise ValueError(f"method: expected 'dense', 'static', 'rigl' or 'magran', got {method!r}")


def _rnn_weight_macs(m: nn.RNNBase, inp: torch.Tensor) -> dict[str, int]:
    """MACs of each weight of an RNN over a (padded) input sequence: G·H·in per step and direction."""
    if not isinstance(inp, torch.Tensor):  # a PackedSequence: count its real steps
        steps = int(inp.data.shape[0])
    else:
        steps = int(inp.shape[0] * inp.shape[1]) if inp.dim() == 3 else int(inp.shape[0])
    gates = next(g for cls, g in _GATES.items() if isinstance(m, cls))
    out = {}
    for name in m._flat_weights_names:
        if name.startswith("weight_"):
            w = getattr(m, name)
            out[name] = steps * gates * (w.shape[0] // gates) * w.shape[1]
    return out


def _nonzero_weight_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Weight MACs (no bias) of a Linear / Conv forward, the part a sparse weight scales."""
    w = module.weight
    if isinstance(module, nn.Linear):
        return inp.numel() // inp.shape[-1] * w.shape[0] * w.shape[1]
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight (in, out/groups, *k)
        return inp.numel() * math.prod(w.shape[1:])
    return out.numel() * math.prod(w.shape[1:])  # weight (out, in/groups, *k)


@torch.no_grad()
def flops_report(model: nn.Module, inputs: tuple, densities: Mapping[str, float]) -> FlopsReport:
    """Forward FLOPs of ``model(*inputs)`` dense and with the given densities (parameter name ->
    density, e.g. :meth:`Sparsifier.masks` turned into fractions). Works on meta tensors."""
    names = {id(p): n for n, p in model.named_parameters()}
    weight_macs: dict[str, int] = {}
    rnn_macs = 0
    handles = []
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            def rnn_hook(m, args, output):
                nonlocal rnn_macs
                for attr, macs in _rnn_weight_macs(m, args[0]).items():
                    weight_macs[names[id(getattr(m, attr))]] = macs
                    rnn_macs += macs  # biases left out: the papers' counter has no RNN rule
            handles.append(module.register_forward_hook(rnn_hook))
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            def hook(m, args, output):
                weight_macs[names[id(m.weight)]] = _nonzero_weight_macs(m, args[0], output)
            handles.append(module.register_forward_hook(hook))
    try:
        counted = count_macs(model, *inputs)
    finally:
        for h in handles:
            h.remove()
    dense_macs = counted.total + rnn_macs
    layers, saved = [], 0.0
    for name, density in densities.items():
        if name not in weight_macs:
            raise ValueError(f"densities: {name!r} did not take part in the forward pass")
        d = weight_macs[name]
        layers.append(LayerFlops(name, float(density), 2.0 * d, 2.0 * d * density))
        saved += d * (1.0 - density)
    return FlopsReport(2.0 * dense_macs, 2.0 * (dense_macs - saved), layers, 2.0 * sum(weight_macs.values()))


def densities_of(masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Parameter name -> kept fraction of its mask."""
    return {n: float(m.sum()) / m.numel() for n, m in masks.items()}
