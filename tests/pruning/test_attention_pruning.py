"""Channel pruning of attention: whole heads or every head's width, on our DiT's fused qkv, our
U-Net's single-head AttnBlock and diffusers' ``Attention``; the Early-Bird paper's DiT-XL/2 counts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebsparse.earlybird.regions import parse_regions, sampling_shares
from ebsparse.metrics.counting import count_macs, count_params
from ebsparse.models import DiT, DiTConfig, build_model, dit_config, example_inputs
from ebsparse.pruning import (ChannelGroup, ChannelMask, PruningConfig, PruningError, build_groups, check_mask,
                              kept_count, load_pruned, masked_dense, plan, prune, save_pruned, shrink)
from tests.pruning.pruning_models import HFDiTCall, HFUNetCall, randomize

#: the EB paper's DiT table keeps the residual width (x_embedder.proj's group) and the output layer
KEEP_RESIDUAL = ("x_embedder.proj", "final_layer.linear")


def _xl_counts(ratio, attention="heads", ignored=KEEP_RESIDUAL):
    with torch.device("meta"):
        model = DiT(dit_config("XL", 2))
    inputs = example_inputs({"type": "dit", "size": "XL"}, device="meta")
    groups = build_groups(model, inputs, ignored)
    p = plan(model, inputs, PruningConfig(pruning_ratio=ratio, importance="uniform", attention=attention,
                                          ignored_layers=ignored), groups=groups)
    small = shrink(model, p.mask, inputs, groups=groups)
    c = count_macs(small, *inputs)
    return count_params(small), c.macs, c.total, small


def test_dit_xl2_eb_table_counts():
    """EB at 0.5: whole heads (16 -> 8) and MLP width halved, the conditioning width halved, the
    residual width kept: 337.54M params (the table's 337.5M = half of 675.1M) and 57.27G MACs
    without attention matmuls (table: 57.0G; 59.38G with them)."""
    p, m, total, small = _xl_counts(0.5)
    assert (round(p / 1e6, 2), round(m / 1e9, 2), round(total / 1e9, 2)) == (337.54, 57.27, 59.38)
    attn = small.blocks[0].attn
    assert (attn.num_heads, attn.proj.in_features, small.blocks[0].mlp.fc1.out_features) == (8, 576, 2304)
    assert small.x_embedder.proj.out_channels == 1152


def test_dit_xl2_ta_eb_table_counts():
    """TA-EB: 0.3 / 0.6 / 0.8 on [0, 240) / [240, 440) / [440, 1000), weighted by the timesteps each
    region serves (0.24 / 0.20 / 0.56; 64% average ratio): 40.67G MACs (table: 40.7G) and 240.83M
    params (table: 242.1M)."""
    regions = parse_regions("cifar10-3")
    shares = sampling_shares(regions, range(1000))
    counts = [_xl_counts(r.pruning_ratio)[:2] for r in regions]
    params = sum(s * c[0] for s, c in zip(shares, counts))
    macs = sum(s * c[1] for s, c in zip(shares, counts))
    assert [round(s, 2) for s in shares] == [0.24, 0.2, 0.56]
    assert (round(params / 1e6, 2), round(macs / 1e9, 2)) == (240.83, 40.67)


def test_dit_xl2_every_group_at_half_is_a_quarter():
    """The U-Net tables' convention (every group, residual width included) gives a quarter, not the table."""
    p, m, _, small = _xl_counts(0.5, attention="width", ignored=None)
    assert (round(p / 1e6, 2), round(m / 1e9, 2)) == (173.49, 29.71)
    attn = small.blocks[0].attn
    assert (attn.num_heads, attn.proj.in_features) == (16, 640)  # 72 -> 36, rounded to 40 (multiple of 8)


def _group(size, heads):
    return ChannelGroup(key="a.qkv", size=size, partitions=heads, members=(), heads=heads)


def test_kept_head_width_is_a_multiple_of_8_unless_asked():
    assert kept_count(_group(16 * 72, 16), 0.5, head_dim_multiple=8) == 16 * 40
    assert kept_count(_group(16 * 72, 16), 0.5, head_dim_multiple=1) == 16 * 36
    assert kept_count(_group(16 * 64, 16), 0.5, head_dim_multiple=8) == 16 * 32
    assert kept_count(_group(6 * 64, 6), 0.5, attention="heads") == 3 * 64
    assert kept_count(_group(3 * 64, 3), 0.9, attention="heads") == 64  # at least one head
    with pytest.raises(PruningError, match="attention must be one of"):
        kept_count(_group(64, 2), 0.5, attention="rows")
    with pytest.raises(PruningError, match="head_dim_multiple"):
        PruningConfig(head_dim_multiple=0)
    with pytest.raises(PruningError, match="attention"):
        PruningConfig(attention="columns")


def test_heads_may_go_whole_but_kept_heads_keep_equal_widths():
    group = _group(12, 3)
    groups = type("G", (), {"signature": lambda self: [("a.qkv", 12)], "__iter__": lambda self: iter([group])})()
    check_mask(groups, ChannelMask({"a.qkv": torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)}))
    check_mask(groups, ChannelMask({"a.qkv": torch.tensor([1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)}))
    with pytest.raises(PruningError, match="heads must keep equally many"):
        check_mask(groups, ChannelMask({"a.qkv": torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)}))


def _scale_q_rows(model, mask, groups):
    """Width pruning changes SDPA's scale to the kept head width: give the masked-dense oracle the
    same scale by multiplying its q rows by sqrt(d / d_kept)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for g in groups:
            if g.key.endswith(".qkv") and not mask[g.key].all():
                per = mask[g.key].view(g.partitions, -1).sum(1)
                factor = math.sqrt((g.size // g.partitions) / int(per.max()))
                modules[g.key].weight[:g.size].mul_(factor)
                modules[g.key].bias[:g.size].mul_(factor)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.sampled_from([1, 2, 3, 4]), head_dim=st.sampled_from([4, 5, 8, 9, 12, 16]),
       ratio=st.sampled_from([0.25, 0.5, 0.7]), attention=st.sampled_from(["width", "heads"]),
       multiple=st.sampled_from([1, 4, 8]), seed=st.integers(0, 100))
def test_our_dit_attention_prune_equals_masked_dense(heads, head_dim, ratio, attention, multiple, seed):
    """Only the attention groups pruned: the shrunk DiT computes what the full-width DiT computes with
    those q/k/v rows and proj columns zeroed (up to the scale of the kept head width)."""
    hidden = heads * head_dim
    if hidden % 4:  # the sin-cos position table needs hidden % 4 == 0
        return
    torch.manual_seed(seed)
    model = randomize(DiT(DiTConfig(input_size=4, patch_size=2, in_channels=2, hidden_size=hidden, depth=2,
                                    num_heads=heads, num_classes=3, learn_sigma=False)), seed).eval()
    inputs = (torch.randn(2, 2, 4, 4), torch.tensor([3, 700]), torch.tensor([0, 2]))
    work = copy.deepcopy(model)
    groups = build_groups(work, inputs)
    cfg = PruningConfig(pruning_ratio=ratio, attention=attention, head_dim_multiple=multiple)
    p = plan(model, inputs, cfg, groups=groups)
    keep = {k: (v if k.endswith(".qkv") else torch.ones_like(v)) for k, v in p.mask.keep.items()}
    mask = ChannelMask(keep)
    oracle = masked_dense(model, groups, mask)
    _scale_q_rows(oracle, mask, groups)
    small = shrink(work, mask, inputs, groups=groups)
    for i, block in enumerate(small.blocks):
        kept = mask[f"blocks.{i}.attn.qkv"].view(heads, head_dim).sum(1)
        live = int((kept > 0).sum())
        attn = block.attn
        assert attn.num_heads == live and attn.proj.in_features == int(kept.sum()) == attn.qkv.out_features // 3
        if attention == "heads" and heads > 1:  # one head is an ordinary group (the reference's rule)
            assert set(kept.tolist()) <= {0, head_dim}
        elif heads > 1 and multiple > 1 and head_dim >= multiple:
            assert int(kept.max()) % multiple == 0
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), oracle(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["width", "heads"])
def test_our_dit_recipe_restores_heads_and_width(tmp_path, attention):
    spec = {"type": "dit", "input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 2,
            "num_heads": 4, "num_classes": 10}
    torch.manual_seed(0)
    model = randomize(build_model(spec)).eval()
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([1, 3]))
    cfg = PruningConfig(pruning_ratio=0.5, attention=attention)
    result = prune(model, inputs, cfg)
    attn = result.model.blocks[0].attn
    assert (attn.num_heads, attn.proj.in_features) == ((2, 32) if attention == "heads" else (4, 32))
    save_pruned(tmp_path, result.model, result.mask, base=spec, example_inputs=inputs, config=cfg)
    again, _ = load_pruned(tmp_path, build_model)
    assert [b.attn.num_heads for b in again.blocks] == [b.attn.num_heads for b in result.model.blocks]
    with torch.no_grad():
        torch.testing.assert_close(again(*inputs), result.model.eval()(*inputs), rtol=0, atol=0)


def test_our_unet_single_head_attention_is_an_ordinary_group(tiny_unet, unet_inputs):
    """The DDPM U-Net's AttnBlock has one head: its q/k/v/proj_out width follows the reference rule
    (no head rounding), in either attention mode, and its scale follows the kept width."""
    for attention in ("width", "heads"):
        small = prune(tiny_unet, unet_inputs, PruningConfig(pruning_ratio=0.3, attention=attention)).model
        attn = small.mid.attn_1
        assert attn.q.out_channels == attn.k.out_channels == attn.v.out_channels == attn.proj_out.in_channels == 22  # int(32 * 0.7)


def _hf_attention_modules(model):
    from diffusers.models.attention_processor import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("which", ["unet", "dit"])
@pytest.mark.parametrize("attention", ["width", "heads"])
def test_diffusers_attention_heads_and_width(which, attention, hf_unet, unet_inputs, hf_dit, dit_inputs):
    """diffusers Attention (U-Net and DiT): heads removed lower ``heads``, widths lower the head
    width; q/k/v/out agree, ``scale`` is the kept head width's, and the output is the masked-dense
    model's (whole heads: exactly; narrower heads: with its q scaled)."""
    model, inputs = (HFUNetCall(hf_unet), unet_inputs) if which == "unet" else (HFDiTCall(hf_dit), dit_inputs)
    model.eval()
    before = [(m.heads, m.inner_dim // m.heads) for m in _hf_attention_modules(model)]
    work = copy.deepcopy(model)
    groups = build_groups(work, inputs)
    p = plan(model, inputs, PruningConfig(pruning_ratio=0.5, attention=attention, head_dim_multiple=1), groups=groups)
    attn_keys = {g.key for g in groups if g.heads}
    assert attn_keys, "no multi-head attention group found"
    mask = ChannelMask({k: (v if k in attn_keys else torch.ones_like(v)) for k, v in p.mask.keep.items()})
    oracle = masked_dense(model, groups, mask)
    if attention == "width":
        modules = dict(oracle.named_modules())
        with torch.no_grad():
            for k in attn_keys:
                modules[k].weight.mul_(math.sqrt(2.0))
                modules[k].bias.mul_(math.sqrt(2.0)) if modules[k].bias is not None else None
    small = shrink(work, mask, inputs, groups=groups)
    for (h, d), m in zip(before, _hf_attention_modules(small)):
        assert m.to_q.out_features == m.to_k.out_features == m.to_v.out_features == m.to_out[0].in_features
        expect = (max(1, h // 2), d) if attention == "heads" else (h, d // 2)
        assert (m.heads, m.inner_dim // m.heads) == expect
        assert m.scale == pytest.approx(expect[1] ** -0.5)
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), oracle(*inputs), rtol=1e-4, atol=1e-5)
