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


def test_diffusers_fused_projections_are_one_sparse_linear_call():
    """diffusers' own ``Attention.fuse_projections()`` (one ``to_qkv`` linear) + ``sparsify``: q, k and v in one
    sparse kernel call per attention."""
    pytest.importorskip("diffusers")
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                  num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=10).eval()
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([3, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        dense = model(x, timestep=t, class_labels=y).sample
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    for m in model.modules():
        if isinstance(m, Attention):
            with torch.no_grad():
                m.fuse_projections()
            m.set_processor(FusedAttnProcessor2_0())
    report = sparsify(model, density=1.0, include=["*to_qkv", "*to_out.0"], backend="native")
    assert report is not None
    with trace() as calls, torch.no_grad():
        out = model(x, timestep=t, class_labels=y).sample
    assert [c for c in calls if c[0] == "linear"].count(("linear", "forward", "native")) == 2
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-4)
