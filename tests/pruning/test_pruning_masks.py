"""Masks as data: the reference's per-group ratio rule, rounding, Hamming distance, JSON."""

import pytest
import torch

from ebsparse.pruning import (
    ChannelGroup,
    ChannelMask,
    PruningError,
    hamming_distance,
    kept_count,
    select_channels,
)
from ebsparse.pruning.graph import DependencyGroups


def _g(size, parts=1, key="g"):
    return ChannelGroup(key=key, size=size, partitions=parts, members=())


@pytest.mark.parametrize("size,parts,ratio,kept", [
    (128, 32, 0.3, 96),    # reference: 128 -> 96 with GroupNorm(32)
    (256, 32, 0.3, 192),   # reference: 256 -> 192
    (512, 1, 0.3, 358),    # no GroupNorm: n_pruned = 512 - int(358.4) = 154
    (256, 32, 0.5, 128),
    (128, 32, 0.0, 128),
    (10, 1, 0.25, 7),      # n_pruned = 10 - int(7.5) = 3
])
def test_kept_count_follows_the_reference(size, parts, ratio, kept):
    n_pruned = size - int(size * (1 - ratio))
    assert kept_count(_g(size, parts), ratio) == kept == size - (n_pruned // parts) * parts


def test_round_to_multiples():
    assert kept_count(_g(512), 0.3, round_to=8) == 360  # 358 -> nearest multiple of 8
    assert kept_count(_g(512), 0.3, round_to=64) == 384
    assert kept_count(_g(128, 32), 0.3, round_to=8) % 32 == 0  # lcm with the GroupNorm partitions
    assert kept_count(_g(6), 0.5, round_to=8) == 3  # a step wider than the group: left as is


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_ratio(ratio):
    with pytest.raises(PruningError, match="pruning_ratio"):
        kept_count(_g(128), ratio)


def test_group_losing_all_channels():
    with pytest.raises(PruningError, match="remove all 4 channels of group 'g'"):
        kept_count(_g(4, 2), 0.9)
    with pytest.raises(PruningError, match="all"):
        kept_count(_g(2), 0.6)


def test_select_prunes_lowest_scores_evenly_per_partition():
    groups = DependencyGroups([_g(8, 2, "a"), _g(4, 1, "b")])
    scores = {"a": torch.tensor([5., 1, 2, 9, 0, 8, 7, 3]), "b": torch.tensor([1., 1, 1, 0])}
    m = select_channels(groups, scores, 0.5)
    assert m["a"].tolist() == [True, False, False, True, False, True, True, False]  # 2 per half
    assert m["b"].tolist() == [True, True, False, False]  # ties: the higher index goes
    assert list(m) == ["a", "b"]


def test_select_with_given_counts_keeps_them_evenly_and_whole_heads():
    heads = ChannelGroup("h", 8, 4, (), heads=4)  # 4 heads of 2
    groups = DependencyGroups([_g(8, 2, "a"), heads, _g(4, 1, "b")])
    scores = {"a": torch.tensor([5., 1, 2, 9, 0, 8, 7, 3]), "h": torch.tensor([1., 1, 9, 9, 0, 0, 5, 5]),
              "b": torch.tensor([4., 3, 2, 1])}
    m = select_channels(groups, scores, 0.5, counts={"a": 6, "h": 4})  # "b": the ratio's rule (2)
    assert m["a"].tolist() == [True, False, True, True, False, True, True, True]  # 3 per half
    assert m["h"].tolist() == [False, False, True, True, False, False, True, True]  # the 2 best heads
    assert m["b"].tolist() == [True, True, False, False]
    for bad in ({"a": 5}, {"a": 0}, {"a": 10}, {"h": 3}):  # not a multiple of the parts / heads, or out of range
        with pytest.raises(PruningError, match=r"counts\['[ah]'\]"):
            select_channels(groups, scores, 0.5, counts=bad)


def test_select_refuses_unsupported_groups_unless_skipped():
    bad = ChannelGroup("x", 4, 1, (), unsupported="layer 'y' is odd")
    groups = DependencyGroups([bad])
    with pytest.raises(PruningError, match="'x' cannot be pruned: layer 'y' is odd"):
        select_channels(groups, {"x": torch.zeros(4)}, 0.5)
    assert select_channels(groups, {"x": torch.zeros(4)}, 0.5, on_unsupported="skip")["x"].all()


def test_hamming_distance():
    a = ChannelMask({"p": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "q": torch.ones(6, dtype=torch.bool)})
    b = ChannelMask({"p": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "q": torch.ones(6, dtype=torch.bool)})
    assert hamming_distance(a, a) == 0.0
    assert hamming_distance(a, b) == pytest.approx(2 / 10)
    other = ChannelMask({"p": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(PruningError, match="same model"):
        hamming_distance(a, other)


def test_mask_json_round_trip_and_validation():
    m = ChannelMask({"p": torch.tensor([1, 0, 1], dtype=torch.bool), "q": torch.tensor([0, 1], dtype=torch.bool)})
    rows = m.to_json()
    assert rows == [{"key": "p", "size": 3, "keep": [0, 2]}, {"key": "q", "size": 2, "keep": [1]}]
    back = ChannelMask.from_json(rows)
    assert hamming_distance(m, back) == 0.0 and list(back) == ["p", "q"]
    with pytest.raises(PruningError, match=r"in \[0, 3\)"):
        ChannelMask.from_json([{"key": "p", "size": 3, "keep": [3]}])
