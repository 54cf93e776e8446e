"""Index building and exact-count masks."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.formats import build_index, check_density, exact_kept_count, magnitude_mask, random_mask


@given(m=st.integers(1, 30), k=st.integers(1, 30), density=st.floats(0, 1), seed=st.integers(0, 1000))
def test_index_round_trip(m, k, density, seed):
    mask = torch.rand(m, k, generator=torch.Generator().manual_seed(seed)) < density
    index = build_index(mask)
    assert index.nnz == int(mask.sum())
    rebuilt = torch.zeros(m, k, dtype=torch.bool)
    for row in range(m):
        rebuilt[row, index.col_idx[index.row_ptr[row]:index.row_ptr[row + 1]].long()] = True
    assert torch.equal(rebuilt, mask)
    rebuilt_t = torch.zeros(k, m, dtype=torch.bool)
    for col in range(k):
        rebuilt_t[col, index.row_idx[index.col_ptr[col]:index.col_ptr[col + 1]].long()] = True
    assert torch.equal(rebuilt_t, mask.t())
    assert all(t.dtype == torch.int32 for t in index.tensors())


def test_conv_index_views_weight_as_matrix():
    mask = torch.rand(4, 3, 3, 3) < 0.5
    index = build_index(mask)
    assert (index.rows, index.cols) == (4, 27)


@given(numel=st.integers(1, 500), density=st.floats(0, 1))
def test_exact_counts(numel, density):
    expected = int(round(density * numel))
    assert exact_kept_count(numel, density) == expected
    assert int(random_mask((numel,), density).sum()) == expected
    assert int(magnitude_mask(torch.randn(numel), density).sum()) == expected


def test_magnitude_mask_keeps_largest():
    w = torch.tensor([[0.1, -5.0], [3.0, 0.2]])
    assert torch.equal(magnitude_mask(w, 0.5), torch.tensor([[False, True], [True, False]]))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x"])
def test_bad_density(bad):
    with pytest.raises((ValueError, TypeError), match="density"):
        check_density(bad)


def test_bad_mask_dtype():
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        build_index(torch.ones(2, 2))


def test_index_knows_the_mask_it_describes():
    from ebsparse.formats.index import PatternIndex

    mask = torch.rand(6, 10, generator=torch.Generator().manual_seed(0)) < 0.4
    index = build_index(mask)
    assert isinstance(index, PatternIndex) and index.describes(mask)
    assert index.describes(mask.clone())  # another tensor, same pattern: compared by content
    assert not index.describes(~mask)
    assert not index.describes(torch.ones(6, 11, dtype=torch.bool))
    mask[0, 0] = not bool(mask[0, 0])  # edited in place: the version moves, the content differs
    assert not index.describes(mask)


def test_zero_dropped_is_exact_for_non_finite_values():
    from ebsparse.formats.index import zero_dropped

    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        w = torch.tensor([[1.5, float("nan"), float("inf"), -2.0]], dtype=dtype)
        mask = torch.tensor([[True, False, False, True]])
        out = zero_dropped(w, build_index(mask).bits(mask, dtype))
        assert torch.equal(out, torch.tensor([[1.5, 0.0, 0.0, -2.0]], dtype=dtype))


def test_2_4_pack_round_trip_and_empty():
    from ebsparse.formats.twofour import magnitude_2_4_rows, pack_2_4_rows, unpack_2_4_rows

    for rows in (torch.randn(5, 16), torch.randn(0, 8)):
        mask = magnitude_2_4_rows(rows)
        values, meta = pack_2_4_rows(rows, mask)
        assert values.shape == (rows.shape[0], rows.shape[1] // 2) and meta.dtype == torch.uint8
        assert torch.equal(unpack_2_4_rows(values, meta), rows * mask)


def test_index_of_a_mask_without_rows():
    index = build_index(torch.zeros(0, 5, dtype=torch.bool))
    assert (index.rows, index.cols, index.nnz) == (0, 5, 0) and index.col_ptr.tolist() == [0] * 6
