"""The DDPM U-Net: the papers' parameter/MAC counts, shapes, module names, config errors."""

from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, strategies as st

from ebsparse.metrics.counting import count_macs, count_params
from ebsparse.models import DDPMUNet, DDPMUNetConfig, build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _model_section(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())["model"]


def _counts(spec: dict) -> tuple[float, float]:
    with torch.device("meta"):
        model = build_model(spec)
        r = spec["resolution"]
        x = torch.empty(1, spec["in_channels"], r, r)
        t = torch.zeros(1, dtype=torch.long)
    return count_params(model) / 1e6, count_macs(model, x, t).macs / 1e9


@pytest.mark.parametrize(
    "config, params_m, macs_g",
    [
        ("cifar10.yaml", 35.75, 6.07),
        ("celeba64.yaml", 78.70, 23.92),
        ("church.yaml", 113.67, 248.69),
        ("bedroom.yaml", 113.67, 248.69),
    ],
)
def test_paper_counts(config, params_m, macs_g):
    params, macs = _counts(_model_section(config))
    assert round(params, 2) == params_m
    assert round(macs, 2) == macs_g


def test_church_with_half_channels_matches_the_pruned_paper_row():
    # Early-Bird Table 1: the 50%-pruned Church U-Net has 28.5M params and 62.4G MACs; halving every
    # width (ch 128 -> 64) is that architecture.
    spec = {**_model_section("church.yaml"), "ch": 64}
    params, macs = _counts(spec)
    assert round(params, 2) == 28.45
    assert round(macs, 2) == 62.42


def test_attention_matmuls_are_reported_separately():
    spec = _model_section("cifar10.yaml")
    with torch.device("meta"):
        model = build_model(spec)
        r = count_macs(model, torch.empty(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    # attention at 16x16 (2 down blocks + 3 up blocks, 256 channels) and in the middle at 4x4 (256 ch):
    # each block costs 2 * (HW)^2 * C
    expected = 5 * 2 * (16 * 16) ** 2 * 256 + 2 * (4 * 4) ** 2 * 256
    assert r.attention_macs == expected
    assert r.total == r.macs + expected


def test_module_names_follow_the_ddim_code_base():
    keys = set(build_model(_model_section("cifar10.yaml")).state_dict())
    for k in [
        "temb.dense.0.weight", "temb.dense.1.bias", "conv_in.weight",
        "down.0.block.0.norm1.weight", "down.0.block.0.conv1.weight", "down.0.block.0.temb_proj.weight",
        "down.0.block.0.norm2.bias", "down.0.block.0.conv2.weight", "down.1.block.0.nin_shortcut.weight",
        "down.1.attn.1.q.weight", "down.1.attn.0.proj_out.bias", "down.0.downsample.conv.weight",
        "mid.block_1.conv1.weight", "mid.attn_1.k.weight", "mid.block_2.temb_proj.bias",
        "up.3.block.2.nin_shortcut.weight", "up.1.attn.2.v.weight", "up.1.upsample.conv.weight",
        "norm_out.weight", "conv_out.bias",
    ]:
        assert k in keys, k
    assert not any(k.startswith("down.3.downsample") or k.startswith("up.0.upsample") for k in keys)


def test_digits_forward_shape_and_time_dependence():
    torch.manual_seed(0)
    model = build_model(_model_section("digits.yaml")).eval()
    x = torch.randn(2, 1, 16, 16)
    out0 = model(x, torch.tensor([0, 0]))
    out1 = model(x, torch.tensor([500, 500]))
    assert out0.shape == x.shape
    assert not torch.allclose(out0, out1)  # the time embedding reaches the output


def test_config_round_trip_rebuilds_the_same_model():
    cfg = DDPMUNetConfig(in_channels=1, out_channels=1, resolution=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(4,), dropout=0.0, num_groups=8)
    torch.manual_seed(1)
    a = DDPMUNet(cfg).eval()
    b = DDPMUNet(DDPMUNetConfig.from_dict(cfg.to_dict())).eval()
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([3])
    assert torch.equal(a(x, t), b(x, t))


@given(ch=st.integers(1, 80), groups=st.sampled_from([8, 32]))
def test_group_norm_divisibility_is_checked(ch, groups):
    kwargs = dict(ch=ch, ch_mult=(1, 2), resolution=8, attn_resolutions=(), num_groups=groups)
    if ch % groups == 0:
        DDPMUNetConfig(**kwargs)
    else:
        with pytest.raises(ValueError, match="num_groups"):
            DDPMUNetConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(resolution=30), "divisible by 2"),
        (dict(attn_resolutions=(7,)), "attn_resolutions"),
        (dict(dropout=1.5), "dropout"),
        (dict(ch_mult=()), "ch_mult"),
        (dict(ch=0), "ch must be a positive int"),
    ],
)
def test_bad_configs_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMUNetConfig(**kwargs)


def test_unknown_keys_and_bad_inputs():
    with pytest.raises(ValueError, match="unknown keys"):
        DDPMUNetConfig.from_dict({"chanels": 3})
    with pytest.raises(ValueError, match="model.type"):
        build_model({"type": "unet3d"})
    model = DDPMUNet(ch=32, ch_mult=(1,), resolution=4, attn_resolutions=(), in_channels=1, out_channels=1)
    with pytest.raises(ValueError, match=r"x of shape \(B, 1, R, R\)"):
        model(torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="t of shape"):
        model(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.long))
