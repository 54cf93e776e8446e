"""Exact-count masks, drop/grow selection, the update schedule and config errors."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.s2s import SparsityConfig, UpdateSchedule, drop_smallest, grow_largest, kept_count, random_mask


@given(st.integers(1, 500), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_random_mask_exact_count(numel, density, seed):
    n = kept_count(numel, density)
    assert numel - n == round((1 - density) * numel)
    mask = random_mask((numel,), n, torch.Generator().manual_seed(seed))
    assert mask.dtype == torch.bool and int(mask.sum()) == n


@given(st.integers(2, 60), st.data())
def test_drop_and_grow_pick_extremes(numel, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    n_active = data.draw(st.integers(1, numel))
    mask = random_mask((numel,), n_active, g)
    scores = torch.randn(numel, generator=g)
    k = data.draw(st.integers(0, n_active))
    kept = drop_smallest(mask, scores, k)
    assert int(kept.sum()) == n_active - k and not (kept & ~mask).any()
    dropped = mask & ~kept
    if k and int(kept.sum()):  # every dropped score is <= every kept score
        assert scores[dropped].max() <= scores[kept].min()
    grow_scores = torch.randn(numel, generator=g)
    j = data.draw(st.integers(0, numel - int(kept.sum())))
    grown = grow_largest(kept, grow_scores, j)
    assert int(grown.sum()) == j and not (grown & kept).any()
    rest = ~kept & ~grown
    if j and rest.any():
        assert grow_scores[grown].min() >= grow_scores[rest].max()


def test_drop_grow_bad_k():
    mask = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match="k: expected 0 <= k <= 2"):
        drop_smallest(mask, torch.zeros(3), 3)
    with pytest.raises(ValueError, match="k: expected 0 <= k <= 1"):
        grow_largest(mask, torch.zeros(3), 2)
    with pytest.raises(ValueError, match="n_keep"):
        random_mask((3,), 4)


def test_schedule_steps_and_cosine():
    sched = UpdateSchedule(SparsityConfig(method="rigl", update_every=10, begin_step=5, end_step=45,
                                          prune_fraction=0.3, prune_fraction_decay="cosine"))
    assert [t for t in range(0, 60) if sched.is_update(t)] == [5, 15, 25, 35, 45]
    for t in (5, 15, 25, 45, 50):
        want = 0.3 * 0.5 * (1 + math.cos(math.pi * min(t - 5, 40) / 40))
        assert sched.prune_fraction(t) == pytest.approx(want)
    assert sched.prune_fraction(45) == pytest.approx(0.0)
    const = UpdateSchedule(SparsityConfig(method="rigl", update_every=4))
    assert [t for t in range(13) if const.is_update(t)] == [4, 8, 12] and const.prune_fraction(8) == 0.05
    with pytest.raises(ValueError, match="end_step"):
        UpdateSchedule(SparsityConfig(method="rigl", prune_fraction_decay="cosine"))


def test_config_defaults_and_errors():
    cfg = SparsityConfig.from_dict({"method": "rigl", "sparsity": 0.9})
    assert cfg.density == 0.1 and cfg.target_sparsity == 0.9  # the paper's S, stored as the library's density
    assert SparsityConfig(sparsity=0.75) == SparsityConfig(density=0.25) == SparsityConfig.from_dict({"density": 0.25})
    assert SparsityConfig().density == 0.5
    assert (cfg.update_every, cfg.prune_fraction, cfg.distribution) == (1100, 0.05, "erk")
    assert cfg.layers == ("conv", "linear", "rnn")
    assert SparsityConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown keys \['drop_fraction'\]"):
        SparsityConfig.from_dict({"method": "rigl", "drop_fraction": 0.3})
    bad = [({"method": "set"}, "sparsity.method"), ({"sparsity": 1.0}, "sparsity.sparsity"),
           ({"density": 0.1, "sparsity": 0.9}, "not both"), ({"density": 0.0}, "sparsity.density"),
           ({"sparsity": "high"}, "sparsity.sparsity: expected a number"),
           ({"distribution": "erdos"}, "sparsity.distribution"),
           ({"update_every": 0}, "sparsity.update_every"), ({"prune_fraction": 1.5}, "sparsity.prune_fraction"),
           ({"layers": ["attention"]}, "sparsity.layers"), ({"end_step": 0}, "sparsity.end_step"),
           ({"custom_sparsity": {"fc*": 2}}, "custom_sparsity")]
    for d, match in bad:
        with pytest.raises(ValueError, match=match):
            SparsityConfig.from_dict(d)
    with pytest.raises(ValueError, match="mapping"):
        SparsityConfig.from_dict([1, 2])
