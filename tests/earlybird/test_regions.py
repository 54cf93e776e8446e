"""Timestep regions and the router: every t goes to exactly one model, mixed batches, the reference's switch."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from ebsparse.earlybird.regions import (PRESETS, Region, parse_regions, region_index, sampling_shares,
                                        switch_points, validate_regions, weighted_ratio)
from ebsparse.earlybird.router import TimestepRouter

CIFAR3 = PRESETS["cifar10-3"]


class Tagged(nn.Module):
    """Returns x * (k + 1) + t: which model answered, and that it saw its own sample's t."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.calls: list[torch.Tensor] = []

    def forward(self, x, t):
        self.calls.append(t.clone())
        return x * (self.k + 1) + t.view(-1, 1, 1, 1).float()


def test_reference_switch():
    assert switch_points(CIFAR3) == [240, 440]
    t = torch.tensor([0, 239, 240, 259, 260, 439, 440, 800, 999])
    assert region_index(t, CIFAR3).tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]


@given(st.lists(st.integers(0, 999), min_size=1, max_size=40))
def test_every_t_goes_to_exactly_one_model_in_both_modes(ts):
    models = [Tagged(k) for k in range(3)]
    router = TimestepRouter(models, CIFAR3)
    t = torch.tensor(ts)
    x = torch.randn(len(ts), 1, 2, 2)
    for training in (False, True):
        router.train(training)
        for m in models:
            m.calls.clear()
        out = router(x, t)
        seen = torch.cat([c for m in models for c in m.calls])
        assert sorted(seen.tolist()) == sorted(ts)  # each sample answered once
        k = router.assign(t)
        expected = x * (k + 1).view(-1, 1, 1, 1).float() + t.view(-1, 1, 1, 1).float()
        assert torch.equal(out, expected)  # in the sample's own position, from the assigned model
        for i, r in enumerate(CIFAR3):  # a model only ever sees timesteps of its region
            for c in models[i].calls:
                assert bool(r.contains(c).all())


def test_training_assignment_covers_each_whole_region():
    router = TimestepRouter([Tagged(k) for k in range(3)], CIFAR3).train()
    k = router.assign(torch.arange(1000))
    for i, r in enumerate(CIFAR3):
        got = torch.nonzero(k == i).flatten()
        assert got.min().item() <= r.low + 1 and got.max().item() >= min(r.high, 999) - 1
    assert router.eval().assign(torch.arange(1000)).tolist() == region_index(torch.arange(1000), CIFAR3).tolist()


@pytest.mark.parametrize("preset", ["cifar10-3", "cifar10-4", "celeba-2"])
def test_training_shares_every_overlap_timestep_by_parity(preset):
    """Inside an overlap of regions i and i + 1, every odd t trains model i and every even t model
    i + 1 (not only some t near the overlap's ends); outside overlaps, training follows sampling."""
    regions = PRESETS[preset]
    router = TimestepRouter([Tagged(k) for k in range(len(regions))], regions).train()
    t = torch.arange(1000)
    k = router.assign(t)
    expected = region_index(t, regions).clone()
    for i, (a, b) in enumerate(zip(regions, regions[1:])):
        for s in range(b.low, min(a.high, 999) + 1):
            expected[s] = i if s % 2 == 1 else i + 1
    assert k.tolist() == expected.tolist()
    for i, r in enumerate(regions):  # each model's training timesteps reach across its whole region
        got = set(torch.nonzero(k == i).flatten().tolist())
        next_low = regions[i + 1].low if i + 1 < len(regions) else 1000
        assert got <= set(range(r.low, max(r.high + 1, next_low)))  # its region, or a gap above it
        hi = min(r.high, 999)
        assert all({s, s + 1} & got for s in range(r.low, hi)), f"model {i} misses two timesteps in a row"


def test_router_equals_per_sample_models_on_real_unets():
    from ebsparse.models import DDPMUNet
    from tests.pruning.pruning_models import tiny_unet_config

    torch.manual_seed(0)
    models = [DDPMUNet(tiny_unet_config()).eval() for _ in range(3)]
    router = TimestepRouter(models, CIFAR3).eval()
    x = torch.randn(6, 3, 8, 8)
    t = torch.tensor([5, 900, 250, 450, 239, 440])
    out = router(x, t)
    for i in range(6):
        k = int(region_index(t[i:i + 1], CIFAR3))
        ref = models[k](x[i:i + 1], t[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-5, atol=1e-5)
    scalar = router(x, torch.tensor(300))  # one t for the whole batch, as samplers may pass
    torch.testing.assert_close(scalar, models[1](x, torch.full((6,), 300)))


def test_router_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one model per region"):
        TimestepRouter([Tagged(0)], CIFAR3)
    router = TimestepRouter([Tagged(k) for k in range(3)], CIFAR3)
    with pytest.raises(ValueError, match="t must be"):
        router(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long))


def test_presets_and_weighted_ratio():
    for name, regions in PRESETS.items():
        validate_regions(regions, 1000)
    # sampling-time shares of t in [0, 999]: 240, 200, 560 timesteps
    assert weighted_ratio(CIFAR3, 1000) == pytest.approx((240 * 0.3 + 200 * 0.6 + 560 * 0.8) / 1000)
    assert weighted_ratio(PRESETS["cifar10-2"], 1000) == pytest.approx(0.6416)  # the supplement's 64.2%
    assert weighted_ratio(PRESETS["cifar10-4"], 1000) == pytest.approx(weighted_ratio(CIFAR3, 1000))
    assert sampling_shares(CIFAR3, [0, 100, 300, 800]) == [0.5, 0.25, 0.25]
    assert len(PRESETS["cifar10-4"]) == 4


@pytest.mark.parametrize("value, match", [
    ("cifar-3", "expected one of"),
    ([], "non-empty"),
    ([{"low": 0, "high": 10}], "exactly the keys"),
    ([{"low": 0, "high": 10, "pruning_ratio": 0.3, "extra": 1}], "exactly the keys"),
    ([[0, 10, 1.0]], "pruning_ratio"),
    ([[10, 5, 0.3]], "high"),
    ([[-1, 5, 0.3]], "low"),
    ([7], "low, high, ratio"),
])
def test_parse_regions_errors(value, match):
    with pytest.raises(ValueError, match=match):
        parse_regions(value)


@pytest.mark.parametrize("regions, match", [
    ([Region(10, 999, 0.3)], "start at 0"),
    ([Region(0, 500, 0.3)], "reach t = 999"),
    ([Region(0, 600, 0.3), Region(0, 999, 0.3)], "increase"),
])
def test_validate_regions_errors(regions, match):
    with pytest.raises(ValueError, match=match):
        validate_regions(regions, 1000)
