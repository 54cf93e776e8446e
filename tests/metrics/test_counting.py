"""The MAC counter's rules on small hand-built modules."""

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from ebsparse.metrics.counting import count_macs, count_params
from ebsparse.models.ddpm_unet import AttnBlock


@given(cin=st.integers(1, 6), cout=st.integers(1, 6), k=st.sampled_from([1, 3]), hw=st.integers(3, 8),
       stride=st.sampled_from([1, 2]), bias=st.booleans())
def test_conv_rule(cin, cout, k, hw, stride, bias):
    conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=bias)
    x = torch.zeros(1, cin, hw, hw)
    out = conv(x)
    r = count_macs(conv, x)
    assert r.macs == out.numel() * cin * k * k + (out.numel() if bias else 0)
    assert r.attention_macs == 0


def test_linear_groupnorm_and_free_ops():
    model = nn.Sequential(nn.Linear(5, 7), nn.SiLU(), nn.Linear(7, 3, bias=False))
    assert count_macs(model, torch.zeros(1, 5)).macs == 5 * 7 + 7 + 7 * 3
    gn = nn.GroupNorm(2, 4)
    assert count_macs(gn, torch.zeros(1, 4, 3, 3)).macs == 2 * 36
    ln = nn.LayerNorm(6, elementwise_affine=False)
    assert count_macs(ln, torch.zeros(2, 6)).macs == 12


def test_attention_block_counts_matmuls_separately():
    block = AttnBlock(32, 8)
    r = count_macs(block, torch.zeros(1, 32, 4, 4))
    assert r.macs == 4 * (16 * 32 * 32 + 16 * 32) + 2 * 32 * 16  # four 1x1 convs + GroupNorm
    assert r.attention_macs == 2 * 16 * 16 * 32
    assert set(r.by_module) == {"norm", "q", "k", "v", "proj_out"}


def test_sdpa_is_counted():
    class M(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q = torch.zeros(2, 3, 5, 4)
    k = torch.zeros(2, 3, 7, 4)
    v = torch.zeros(2, 3, 7, 6)
    assert count_macs(M(), q, k, v).attention_macs == 2 * 3 * 5 * 7 * (4 + 6)


def test_params_and_errors():
    m = nn.Linear(3, 2)
    m.bias.requires_grad_(False)
    assert count_params(m) == 8
    assert count_params(m, trainable_only=True) == 6
    with pytest.raises(TypeError, match="nn.Module"):
        count_params("model")
    with pytest.raises(ValueError, match="inputs"):
        count_macs(m)
    m.train()
    count_macs(m, torch.zeros(1, 3))
    assert m.training  # mode restored
