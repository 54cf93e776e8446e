"""Dependency groups: the couplings the issue lists, on our models and on diffusers' models."""

import pytest
import torch
from torch import nn

from ebsparse.pruning import PruningError, build_groups
from tests.pruning.pruning_models import HFDiTCall, HFUNetCall


def _group_with(groups, name, kind):
    hits = [g for g in groups if any(m.name == name and m.kind == kind for m in g.members)]
    assert len(hits) == 1, f"{name}/{kind} is in {len(hits)} groups"
    return hits[0]


def test_unet_groups_capture_every_coupling(tiny_unet, unet_inputs):
    groups = build_groups(tiny_unet, unet_inputs)
    keys = [g.key for g in groups]
    assert "conv_out" not in keys, "the output conv must stay whole"
    # time-embedding MLP output feeds every temb_proj
    temb = _group_with(groups, "temb.dense.1", "out")
    temb_projs = {n for n, m in tiny_unet.named_modules() if n.endswith("temb_proj")}
    assert temb_projs == {m.name for m in temb.members if m.kind == "in"}
    assert temb.partitions == 1
    # attention: q, k, v outputs and proj_out input move together; the residual stream is elsewhere
    att = _group_with(groups, "mid.attn_1.q", "out")
    assert {(m.name, m.kind) for m in att.members} == {
        ("mid.attn_1.q", "out"), ("mid.attn_1.k", "out"), ("mid.attn_1.v", "out"), ("mid.attn_1.proj_out", "in")}
    # residual add: conv2 and nin_shortcut outputs share a group, with the next block's GroupNorm
    res = _group_with(groups, "down.1.block.0.conv2", "out")
    names = {(m.name, m.kind) for m in res.members}
    assert ("down.1.block.0.nin_shortcut", "out") in names and ("down.1.attn.0.norm", "out") in names
    assert res.partitions == 4  # GroupNorm(4): pruned evenly inside its 4 groups
    # the temb_proj output is added to conv1's output
    inner = _group_with(groups, "down.0.block.0.conv1", "out")
    assert ("down.0.block.0.temb_proj", "out") in {(m.name, m.kind) for m in inner.members}


def test_concat_skip_maps_indices_with_offsets(tiny_unet, unet_inputs):
    groups = build_groups(tiny_unet, unet_inputs)
    # up.0.block.1 sees cat([h from up.0.block.0, skip from conv_in]): the skip sits at offset ch
    ch = tiny_unet.config.ch
    g = _group_with(groups, "conv_in", "out")
    consumer = [m for m in g.members if m.name == "up.0.block.1.conv1" and m.kind == "in"]
    assert len(consumer) == 1
    c = tiny_unet.up[0].block[1].conv1.in_channels
    assert c == 2 * ch
    assert list(consumer[0].idxs) == list(range(ch, 2 * ch)) and list(consumer[0].root_idxs) == list(range(ch))


def test_group_order_and_keys_are_stable(unet_inputs):
    from ebsparse.models import DDPMUNet
    from tests.pruning.pruning_models import tiny_unet_config

    torch.manual_seed(1)
    a = build_groups(DDPMUNet(tiny_unet_config()), unet_inputs)
    torch.manual_seed(2)
    b = build_groups(DDPMUNet(tiny_unet_config()), unet_inputs)
    assert a.signature() == b.signature()
    order = [n for n, _ in DDPMUNet(tiny_unet_config()).named_modules()]
    assert [order.index(g.key) for g in a] == sorted(order.index(g.key) for g in a)


def test_diffusers_unet_groups(hf_unet, unet_inputs):
    model = HFUNetCall(hf_unet)
    groups = build_groups(model, unet_inputs)
    assert "inner.conv_out" not in [g.key for g in groups]
    temb = _group_with(groups, "inner.time_embedding.linear_2", "out")
    projs = {f"inner.{n}" for n, _ in hf_unet.named_modules() if n.endswith("time_emb_proj")}
    assert projs == {m.name for m in temb.members if m.kind == "in"}
    att = _group_with(groups, "inner.mid_block.attentions.0.to_q", "out")
    assert att.partitions == hf_unet.mid_block.attentions[0].heads > 1
    assert ("inner.mid_block.attentions.0.to_out.0", "in") in {(m.name, m.kind) for m in att.members}


def test_diffusers_dit_adaln_rows_follow_the_hidden_channel(hf_dit, dit_inputs):
    groups = build_groups(HFDiTCall(hf_dit), dit_inputs)
    hidden = _group_with(groups, "inner.pos_embed.proj", "out")
    assert hidden.size == hf_dit.inner_dim  # counted in hidden channels, not 6 x hidden adaLN rows
    ada = [m for m in hidden.members if m.name == "inner.transformer_blocks.0.norm1.linear" and m.kind == "out"][0]
    assert len(ada.idxs) == 6 * hidden.size and sorted(set(ada.root_idxs)) == list(range(hidden.size))
    assert hidden.prunable


def test_our_dit_groups_include_the_fused_qkv_inner_width(our_dit, dit_inputs):
    groups = build_groups(our_dit, dit_inputs)
    assert "final_layer.linear" not in [g.key for g in groups]
    hidden = _group_with(groups, "blocks.0.attn.qkv", "in")
    assert hidden.prunable and hidden.size == 64
    ada = [m for m in hidden.members if m.name == "blocks.0.adaLN_modulation.1" and m.kind == "out"][0]
    assert len(ada.idxs) == 6 * 64
    inner = _group_with(groups, "blocks.0.attn.qkv", "out")
    # root channel i of the inner width: qkv rows i, 64 + i, 128 + i (q, k, v) and proj column i
    assert inner.prunable and inner.manual and inner.size == 64 and inner.heads == inner.partitions == 4
    qkv = [m for m in inner.members if m.kind == "out"][0]
    assert qkv.idxs[:2] == (0, 1) and qkv.idxs[64] == 64 and qkv.root_idxs[64] == 0 and len(qkv.idxs) == 192
    assert {(m.name, m.kind) for m in inner.members} == {("blocks.0.attn.qkv", "out"), ("blocks.0.attn.proj", "in")}
    mlp = _group_with(groups, "blocks.0.mlp.fc1", "out")
    assert mlp.prunable and mlp.size == 256


class _GroupedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


def test_unsupported_layer_is_named():
    groups = build_groups(_GroupedConvNet(), (torch.randn(1, 3, 8, 8),))
    bad = groups["a"]
    assert not bad.prunable and "'b'" in bad.unsupported and "groups=2" in bad.unsupported


def test_unknown_ignored_layer_is_an_error(tiny_unet, unet_inputs):
    with pytest.raises(PruningError, match="ignored_layers"):
        build_groups(tiny_unet, unet_inputs, ignored_layers=["no_such_layer"])
