"""The latent-diffusion U-Net: the paper's counts, the reference's field names and rules, attention
against a pure-PyTorch copy of the reference's legacy QKV attention, and sparse modules on it."""

import copy
import math

import pytest
import torch

import ebsparse
from ebsparse.metrics.counting import count_macs, count_params
from ebsparse.models import LDMUNet, LDMUNetConfig, build_model
from ebsparse.models.ldm_unet import AttentionBlock, ldm_timestep_embedding
from ebsparse.nn import SparseConv2d

TINY = dict(image_size=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2),
            attention_resolutions=(2,), num_res_blocks=1, num_head_channels=8, num_groups=4)


def test_paper_celebahq_lsun_unet_counts():
    """celebahq-ldm-vq-4 / lsun_bedrooms-ldm-vq-4 unet_config (the defaults). The LDM paper lists this
    model as 274M parameters; the reference's 1-D qkv/proj_out convs hold the same weights as ours."""
    cfg = LDMUNetConfig()
    assert (cfg.image_size, cfg.model_channels, cfg.channel_mult, cfg.attention_resolutions,
            cfg.num_head_channels) == (64, 224, (1, 2, 3, 4), (8, 4, 2), 32)
    with torch.device("meta"):
        model = LDMUNet(cfg)
        macs = count_macs(model, torch.zeros(1, 3, 64, 64), torch.zeros(1, dtype=torch.long))
    assert count_params(model) == 274_056_163
    assert macs.macs == 96_110_076_352  # convs, linears, norms; attention matmuls separately:
    assert macs.attention_macs == 5_182_062_592


def test_forward_shapes_across_options():
    for extra in ({}, {"use_scale_shift_norm": True}, {"resblock_updown": True}, {"use_new_attention_order": True},
                  {"num_head_channels": -1, "num_heads": 2}, {"conv_resample": False, "channel_mult": (1, 2, 2)}):
        model = LDMUNet(LDMUNetConfig(**{**TINY, **extra}))
        for p in model.parameters():  # the zero-initialised layers would hide wiring errors
            torch.nn.init.normal_(p, std=0.05)
        out = model(torch.randn(3, 3, 8, 8), torch.tensor([0, 10, 999]))
        assert out.shape == (3, 3, 8, 8) and torch.isfinite(out).all(), extra


def test_fresh_model_predicts_zero_as_the_reference():
    model = LDMUNet(LDMUNetConfig(**TINY))
    assert torch.count_nonzero(model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))) == 0


def test_timestep_embedding_is_the_reference_formula():
    t = torch.tensor([0, 7, 999])
    emb = ldm_timestep_embedding(t, 6)
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(3)]
    expected = [[math.cos(float(s) * f) for f in freqs] + [math.sin(float(s) * f) for f in freqs] for s in t]
    torch.testing.assert_close(emb, torch.tensor(expected))


def _legacy_attention_reference(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """openaimodel's QKVAttentionLegacy as einsums over (B * heads, C, T) (written from its formula)."""
    b, c, h, w = x.shape
    qkv = torch.nn.functional.conv2d(block.norm(x), block.qkv.weight, block.qkv.bias).reshape(b, 3 * c, h * w)
    heads = block.num_heads
    q, k, v = qkv.reshape(b * heads, 3 * c // heads, h * w).split(c // heads, dim=1)
    scale = 1 / math.sqrt(math.sqrt(c // heads))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
    return x + block.proj_out(a.reshape(b, c, h, w))


def test_attention_matches_the_legacy_reference():
    torch.manual_seed(0)
    block = AttentionBlock(16, num_heads=2, groups=4, new_order=False).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), _legacy_attention_reference(block, x))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="attention_resolutions"):
        LDMUNetConfig(**{**TINY, "attention_resolutions": (4,)})
    with pytest.raises(ValueError, match="num_head_channels=12"):
        LDMUNetConfig(**{**TINY, "num_head_channels": 12})
    with pytest.raises(ValueError, match="image_size=6"):
        LDMUNetConfig(**{**TINY, "image_size": 6, "channel_mult": (1, 2, 2)})
    with pytest.raises(ValueError, match="num_heads or num_head_channels"):
        LDMUNetConfig(**{**TINY, "num_head_channels": -1})
    with pytest.raises(ValueError, match="model.unet: unknown keys \\['use_spatial_transformer'\\]"):
        build_model({"type": "ldm", "autoencoder": "ae", "unet": {"use_spatial_transformer": True}})
    with pytest.raises(ValueError, match="model.autoencoder is required"):
        build_model({"type": "ldm", "unet": dict(TINY)})
    with pytest.raises(ValueError, match="LDMUNet expects x of shape"):
        LDMUNet(LDMUNetConfig(**TINY))(torch.zeros(1, 4, 8, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="latent size \\(7, 7\\) must be divisible by 2"):
        LDMUNet(LDMUNetConfig(**TINY))(torch.zeros(1, 3, 7, 7), torch.zeros(1, dtype=torch.long))


def test_sparsify_runs_the_sparse_modules():
    """Half the weights of every conv and linear dropped: the sparse model computes what the same
    model with those weights zeroed (densified) computes, and trains."""
    torch.manual_seed(0)
    model = build_model({"type": "ldm", "autoencoder": "unused", "unet": dict(TINY)})
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 500])
    ebsparse.sparsify(model, density=0.5)
    convs = [m for m in model.modules() if isinstance(m, SparseConv2d)]
    assert len(convs) >= 10 and all(0.4 < c.mask.float().mean() < 0.6 for c in convs if c.mask.numel() > 100)
    masked = copy.deepcopy(model)
    ebsparse.densify(masked)
    out = model(x, t)
    torch.testing.assert_close(out, masked(x, t), rtol=1e-4, atol=1e-5)
    out.pow(2).mean().backward()
    assert all(c.weight.grad is not None for c in convs)
