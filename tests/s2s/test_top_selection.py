"""The linear-time selection behind drop_smallest / grow_largest picks exactly what the stable
descending sort of every score picks (ties to the lower flat index), NaNs and exact ties included."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.s2s import drop_smallest, grow_largest
from ebsparse.s2s.masks import _top, _top_by_sort


@given(numel=st.integers(1, 300), levels=st.sampled_from([2, 5, 1000]), allowed_p=st.floats(0, 1),
       k_frac=st.floats(0, 1), nans=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_selection_equals_the_stable_sort(numel, levels, allowed_p, k_frac, nans, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    # few levels: many exact ties, which the tie rule must settle as the sort does
    scores = torch.randint(0, levels, (numel,), generator=g).to(dtype)
    if nans:
        scores[torch.rand(numel, generator=g) < 0.1] = float("nan")
    allowed = torch.rand(numel, generator=g) < allowed_p
    k = int(k_frac * int(allowed.sum()))
    got, want = _top(scores, allowed, k), _top_by_sort(scores, allowed, k)
    assert got.dtype == torch.bool and int(got.sum()) == k
    assert torch.equal(got, want)


def test_drop_and_grow_with_ties_keep_the_lower_indices():
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    kept = drop_smallest(mask, torch.ones(8), 2)  # all tied: the two highest indices go
    assert kept.tolist() == [True, True, False, False, False, False, False, False]
    grown = grow_largest(kept, torch.tensor([9.0, 9, 1, 1, 1, 1, 0, 0]), 3)  # ties: the lowest inactive indices
    assert grown.tolist() == [False, False, True, True, True, False, False, False]
