"""Sparse attention projections: ``sparsify`` on DiT (pruned to an odd head width, 72 -> 40 and
whole heads) turns the fused qkv into ONE sparse linear (one kernel call for q, k and v per
forward) and the output projection into another, unstructured and 2:4, on the native kernels."""

from __future__ import annotations

import pytest
import torch

from ebsparse.backends import trace
from ebsparse.models import DiT, DiTConfig
from ebsparse.nn import SparseLinear, sparsify
from ebsparse.pruning import PruningConfig, prune


@pytest.mark.parametrize("pattern,density", [("unstructured", 0.25), ("2:4", None)])
@pytest.mark.parametrize("attention", ["width", "heads"])
def test_dit_qkv_is_one_sparse_linear_call(pattern, density, attention):
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=4, patch_size=2, in_channels=1, hidden_size=144, depth=1, num_heads=2,
                          num_classes=3, learn_sigma=False))  # head width 72, as DiT-XL/2's
    x, t, y = torch.randn(2, 1, 4, 4), torch.tensor([1, 900]), torch.tensor([0, 2])
    model = prune(model, (x, t, y), PruningConfig(pruning_ratio=0.5, attention=attention)).model
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.proj.in_features) == ((2, 80) if attention == "width" else (1, 72))
    sparsify(model, density=density, pattern=pattern, include=["*.attn.qkv", "*.attn.proj"], backend="native")
    assert isinstance(attn.qkv, SparseLinear) and isinstance(attn.proj, SparseLinear)
    with trace() as calls:
        out = model(x, t, y)
        out.square().mean().backward()
    linear = [c for c in calls if c[0] == "linear"]
    assert linear.count(("linear", "forward", "native")) == 2  # qkv (q, k, v together) and proj
    assert linear.count(("linear", "backward", "native")) == 2
    assert attn.qkv.weight.grad is not None and torch.isfinite(out).all()
