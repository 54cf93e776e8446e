"""Physical shrink: a really smaller model that computes what the masked-dense model computes."""

import copy
import math

import pytest
import torch
from torch import nn

from ebsparse.pruning import (
    ChannelMask,
    PruningConfig,
    PruningError,
    build_groups,
    check_mask,
    masked_dense,
    plan,
    prune,
    shrink,
)
from tests.pruning.pruning_models import HFDiTCall, HFUNetCall

_NORMS = ("GroupNorm", "LayerNorm")


def _exact_groups(groups):
    """Groups whose channels no normalisation statistic spans: removing one cannot change the others."""
    return {g.key for g in groups if g.prunable and not any(m.layer in _NORMS for m in g.members)}


def _rescale_attention(model, groups, mask, q_suffixes=(".q", ".to_q", ".qkv")):
    """Attention scales with the current head width (reference: int(c) ** -0.5); give the masked-dense
    oracle the pruned width's scale by scaling its q by sqrt(d / d_kept) (a fused qkv: its q rows).
    Whole heads removed leave the scale alone."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for g in groups:
            if g.key.endswith(q_suffixes) and not mask[g.key].all():
                per = mask[g.key].view(g.partitions, -1).sum(1)
                factor = math.sqrt((g.size // g.partitions) / int(per.max()))
                q = modules[g.key]
                rows = slice(0, g.size) if g.key.endswith(".qkv") else slice(None)
                q.weight[rows].mul_(factor)
                q.bias[rows].mul_(factor)


def _check_equivalent(model, inputs, ratio=0.5, attention=True):
    model.eval()
    work = copy.deepcopy(model)
    groups = build_groups(work, inputs)  # traced once, on the copy that is shrunk in place below
    p = plan(model, inputs, PruningConfig(pruning_ratio=ratio, on_unsupported="skip"), groups=groups)
    exact = _exact_groups(groups)
    if not attention:
        exact = {k for k in exact if not k.endswith((".q", ".to_q"))}
    keep = {k: (v if k in exact else torch.ones_like(v)) for k, v in p.mask.keep.items()}
    mask = ChannelMask(keep)
    assert sum(int((~v).sum()) for v in keep.values()) > 0
    oracle = masked_dense(model, groups, mask)
    small = shrink(work, mask, inputs, groups=groups)
    _rescale_attention(oracle, groups, mask)
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), oracle(*inputs), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    return exact


def test_our_unet_equals_masked_dense(tiny_unet, unet_inputs):
    exact = _check_equivalent(tiny_unet, unet_inputs)
    assert {"temb.dense.0", "mid.attn_1.q"} <= exact


def test_diffusers_unet_equals_masked_dense(hf_unet, unet_inputs):
    exact = _check_equivalent(HFUNetCall(hf_unet), unet_inputs)
    assert "inner.mid_block.attentions.0.to_q" in exact  # multi-head: pruned evenly per head


def test_diffusers_dit_equals_masked_dense(hf_dit, dit_inputs):
    exact = _check_equivalent(HFDiTCall(hf_dit), dit_inputs)
    assert "inner.transformer_blocks.0.ff.net.0.proj" in exact


def test_our_dit_equals_masked_dense(our_dit, dit_inputs):
    exact = _check_equivalent(our_dit, dit_inputs)
    assert "blocks.0.mlp.fc1" in exact


@pytest.mark.parametrize("which", ["ours", "diffusers_unet", "diffusers_dit"])
def test_full_prune_shrinks_every_group_and_trains(which, tiny_unet, unet_inputs, hf_unet, hf_dit, dit_inputs):
    model, inputs = {"ours": (tiny_unet, unet_inputs), "diffusers_unet": (HFUNetCall(hf_unet), unet_inputs),
                     "diffusers_dit": (HFDiTCall(hf_dit), dit_inputs)}[which]
    before = copy.deepcopy(model.state_dict())
    # hf_unet's heads are 8 wide: kept a multiple of 8 (the default) they would stay whole
    result = prune(model, inputs, PruningConfig(pruning_ratio=0.5, head_dim_multiple=1))
    small = result.model
    assert all(not bool(result.mask[k].all()) for k in result.mask)
    for m in small.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0
    ratio = sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in small.parameters())
    assert 2.5 < ratio < 4.5
    small.train()
    out = small(*inputs)
    assert out.shape == model(*inputs).shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model was modified"


def test_attention_scale_follows_the_pruned_width(tiny_unet, unet_inputs):
    groups = build_groups(tiny_unet, unet_inputs)
    keep = {k: torch.ones(n, dtype=torch.bool) for k, n in groups.signature()}
    keep["mid.attn_1.q"][::2] = False
    small = shrink(tiny_unet, ChannelMask(keep), unet_inputs)
    assert small.mid.attn_1.q.out_channels == groups["mid.attn_1.q"].size // 2


def _signature_mask(groups):
    return {k: torch.ones(n, dtype=torch.bool) for k, n in groups.signature()}


def test_bad_masks_leave_the_model_untouched(tiny_unet, unet_inputs):
    groups = build_groups(tiny_unet, unet_inputs)
    before = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    keep = _signature_mask(groups)
    keep["temb.dense.0"][:] = False
    with pytest.raises(PruningError, match="would lose all"):
        check_mask(groups, ChannelMask(keep))
    keep = _signature_mask(groups)
    keep["down.0.block.0.conv1"][:3] = False  # 3 channels: the GroupNorm parts would differ
    with pytest.raises(PruningError, match="partitions must keep equally many"):
        check_mask(groups, ChannelMask(keep))
    keep = _signature_mask(groups)
    keep.pop("temb.dense.0")
    with pytest.raises(PruningError, match="does not match"):
        shrink(tiny_unet, ChannelMask(keep), unet_inputs)
    for k, v in tiny_unet.state_dict().items():
        assert v.shape == before[k].shape and torch.equal(v, before[k])


class _GroupedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c = nn.Conv2d(8, 8, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.out(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_unsupported_group_is_an_error_unless_skipped():
    torch.manual_seed(0)
    model, inputs = _GroupedConvNet(), (torch.randn(1, 3, 8, 8),)
    with pytest.raises(PruningError, match="cannot be pruned"):
        prune(model, inputs, PruningConfig(pruning_ratio=0.3))
    small = prune(model, inputs, PruningConfig(pruning_ratio=0.5, on_unsupported="skip")).model
    assert small.a.out_channels == 8 and small.b.out_channels == 8  # the grouped conv's groups stay whole
    assert small.c.out_channels == 4
    assert small(*inputs).shape == model(*inputs).shape


def test_bad_config():
    with pytest.raises(PruningError, match=r"pruning_ratio must be a number in \[0, 1\)"):
        PruningConfig(pruning_ratio=1.0)
    with pytest.raises(PruningError, match="round_to"):
        PruningConfig(round_to=0)
