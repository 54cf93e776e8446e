"""Transposable 2:4 masks (ebsparse.formats.transposable): 2 of 4 along both dimensions of every
4x4 block; the exact magnitude choice against its loop reference, the greedy baseline and plain 2:4."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.formats.transposable import (PATTERNS, greedy_transposable_2_4_mask, is_transposable_2_4,
                                           transposable_2_4_mask, transposable_2_4_mask_reference)
from ebsparse.formats.twofour import is_2_4_mask, magnitude_2_4_rows, rows_view


def test_there_are_90_transposable_4x4_patterns():
    assert PATTERNS.shape == (90, 4, 4)
    assert bool((PATTERNS.sum(1) == 2).all() and (PATTERNS.sum(2) == 2).all())
    assert len({tuple(p.flatten().tolist()) for p in PATTERNS}) == 90


shapes = st.one_of(
    st.tuples(st.integers(0, 5), st.integers(0, 5)).map(lambda s: (4 * s[0], 4 * s[1])),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
      .map(lambda s: (4 * s[0], 4 * s[1], s[2], s[3])),
)


@settings(max_examples=40)
@given(shape=shapes, seed=st.integers(0, 2**16), integers=st.booleans())
def test_exact_choice_matches_the_loop_reference_and_is_transposable(shape, seed, integers):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if integers:  # many ties: the tie-break must agree too
        w = w.mul(2).round()
    mask = transposable_2_4_mask(w)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert torch.equal(mask, transposable_2_4_mask_reference(w))
    if mask.numel():
        assert is_transposable_2_4(mask)
        assert is_2_4_mask(mask)  # along the input dimension, as plain 2:4
        if mask.dim() == 2:
            assert is_2_4_mask(mask.T.contiguous())  # W^T is 2:4: the grad-input GEMM's operand


@settings(max_examples=30)
@given(m=st.integers(1, 6), k=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_exact_keeps_at_least_greedy_and_at_most_plain_2_4(m, k, seed):
    w = torch.randn(4 * m, 4 * k, generator=torch.Generator().manual_seed(seed))
    kept = lambda mask: float(w.abs()[mask].sum())  # noqa: E731
    exact, greedy = transposable_2_4_mask(w), greedy_transposable_2_4_mask(w)
    assert is_transposable_2_4(greedy)
    assert kept(exact) >= kept(greedy) - 1e-4
    assert kept(exact) <= kept(magnitude_2_4_rows(w)) + 1e-4


def test_a_plain_2_4_mask_is_usually_not_transposable():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    assert not is_transposable_2_4(magnitude_2_4_rows(w))


def test_conv_blocks_are_per_tap_over_output_and_input_channels():
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    mask = transposable_2_4_mask(w)
    for kh in range(3):
        for kw in range(3):
            tap = mask[:, :, kh, kw]
            assert bool((tap.reshape(2, 4, 4).sum(1) == 2).all()), "2 of 4 along out channels"
            assert bool((tap.reshape(8, 1, 4).sum(2) == 2).all()), "2 of 4 along in channels"
    assert is_2_4_mask(mask) and torch.equal(rows_view(mask).sum(1), torch.full((72,), 2))


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="weight: .*multiples of 4"):
        transposable_2_4_mask(torch.randn(6, 8))
    with pytest.raises(ValueError, match="weight: expected a linear"):
        transposable_2_4_mask(torch.randn(4, 4, 4))
    assert not is_transposable_2_4(torch.ones(6, 8, dtype=torch.bool))
