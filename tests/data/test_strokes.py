"""Sketch <-> ChiroDiff sequence: normalisation, arc-length resampling, pen bits, round trips, rendering."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.data.strokes import (normalize_strokes, render_sequences, render_strokes, resample_strokes,
                                   sequence_to_strokes, strokes_to_sequence)


def test_normalize_moves_first_point_to_origin_and_farthest_to_one():
    s = normalize_strokes([np.array([[2.0, 3.0], [6.0, 3.0]]), np.array([[2.0, 5.0]])])
    np.testing.assert_allclose(s[0], [[0, 0], [1, 0]])
    np.testing.assert_allclose(s[1], [[0, 0.5]])
    np.testing.assert_allclose(normalize_strokes([np.array([[4.0, 4.0]])])[0], [[0, 0]])  # a lone point


def test_resample_spaces_points_equally_along_the_arc():
    (line,) = resample_strokes([np.array([[0.0, 0.0], [10.0, 0.0]])], 5)
    np.testing.assert_allclose(line, [[0, 0], [2.5, 0], [5, 0], [7.5, 0], [10, 0]])
    (corner,) = resample_strokes([np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])], 5)  # repeated point
    np.testing.assert_allclose(corner, [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1]])


def test_resample_shares_points_by_arc_length_two_at_least():
    long, short = resample_strokes([np.array([[0.0, 0.0], [3.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 1.0]])], 8)
    assert (len(long), len(short)) == (5, 3)  # 2 + 2 each, the other 4 as 3 : 1
    a, b, dot = resample_strokes([np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 1.0]]),
                                  np.array([[5.0, 5.0]])], 7)
    assert (len(a), len(b), len(dot)) == (3, 2, 2)  # the remainder goes to the earlier stroke
    np.testing.assert_allclose(dot, [[5, 5], [5, 5]])
    with pytest.raises(ValueError, match="num_points=5 must be an int >= 2 per stroke"):
        resample_strokes([np.zeros((2, 2))] * 3, 5)
    with pytest.raises(ValueError, match=r"strokes\[0\]: expected an array of points"):
        resample_strokes([np.zeros((3, 3))], 5)


def test_sequence_rows_are_moves_with_pen_bits():
    strokes = [np.array([[0.0, 0.0], [3.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 1.0]])]
    seq = strokes_to_sequence(strokes, 7)  # 8 points: 5 on the first stroke, 3 on the second
    assert seq.shape == (7, 3) and seq.dtype == np.float32
    np.testing.assert_array_equal(seq[:, 2], [1, 1, 1, 1, -1, 1, 1])
    np.testing.assert_allclose(seq[:4, :2], [[0.25, 0]] * 4, atol=1e-7)  # 3 / 4 moves, scaled by radius 3
    np.testing.assert_allclose(seq[4, :2], [-1, 1 / 3], atol=1e-7)  # the jump to the second stroke
    np.testing.assert_allclose(seq[5:, :2], [[1 / 6, 0]] * 2, atol=1e-7)


def sketches():
    point = st.tuples(st.floats(-50, 50), st.floats(-50, 50))
    stroke = st.lists(point, min_size=1, max_size=6).map(lambda p: np.array(p, dtype=float))
    return st.lists(stroke, min_size=1, max_size=4)


@settings(max_examples=40)
@given(sketches(), st.integers(0, 20))
def test_round_trip_strokes_sequence_strokes(strokes, extra):
    seq_len = 2 * len(strokes) - 1 + extra
    seq = strokes_to_sequence(strokes, seq_len)
    expected = resample_strokes(normalize_strokes(strokes), seq_len + 1)
    back = sequence_to_strokes(torch.from_numpy(seq))
    assert len(back) == len(expected)
    for b, e in zip(back, expected):
        np.testing.assert_allclose(b, e, atol=1e-5)


def test_sequence_to_strokes_threshold_and_errors():
    seq = np.array([[1, 0, 0.3], [0, 1, -0.2], [1, 0, 0.9]], dtype=np.float32)
    (a, b) = sequence_to_strokes(seq)
    np.testing.assert_allclose(a, [[0, 0], [1, 0]])
    np.testing.assert_allclose(b, [[1, 1], [2, 1]])
    assert len(sequence_to_strokes(seq, threshold=0.5)) == 1
    assert sequence_to_strokes(-np.ones((4, 3))) == []
    with pytest.raises(ValueError, match=r"expected a sequence \(L, 3\)"):
        sequence_to_strokes(np.zeros((4, 2)))


def test_render_puts_ink_on_the_stroke_only():
    img = render_strokes([np.array([[0.0, 0.0], [1.0, 0.0]])], 32, line_width=2, margin=0.1)
    assert img.shape == (32, 32) and img.min() >= 0 and img.max() <= 1
    rows = np.flatnonzero(img.max(1) > 0.5)
    cols = np.flatnonzero(img.max(0) > 0.5)
    assert set(rows) <= {14, 15, 16, 17} and {15, 16} <= set(rows)  # centred vertically
    assert cols.min() <= 4 and cols.max() >= 27  # 80% of the width
    assert img[:10].max() == 0 and img[22:].max() == 0
    vertical = render_strokes([np.array([[0.0, 0.0], [0.0, 5.0]])], 32, line_width=2)
    np.testing.assert_allclose(vertical, img.T, atol=1e-6)
    assert render_strokes([], 8).max() == 0


def test_render_sequences_skips_pen_up_moves():
    # two horizontal strokes, one below the other, joined by a pen-up jump along the left edge
    seq = torch.tensor([[1.0, 0, 1], [1, 0, 1], [-2, 2, -1], [1, 0, 1], [1, 0, 1]])
    img = render_sequences(seq[None], 32)
    assert img.shape == (1, 1, 32, 32) and img.min() == -1 and img.max() <= 1
    ink = img[0, 0] > 0
    rows = torch.nonzero(ink.any(1)).flatten()
    assert rows.min() <= 5 and rows.max() >= 26  # both strokes, at the top and the bottom
    assert not ink[10:22].any()  # nothing between them: the jump is not drawn
    with pytest.raises(ValueError, match=r"expected sequences \(N, L, 3\)"):
        render_sequences(seq, 32)
