"""SVG path data -> polylines: every command, absolute and relative, against hand-computed points."""

import numpy as np
import pytest

from ebsparse.data.svg_path import SVGPathError, parse_svg_path


def one(d, n=2):
    paths = parse_svg_path(d, curve_points=n)
    assert len(paths) == 1
    return paths[0]


@pytest.mark.parametrize("d, expected", [
    ("M10,20 L30,40", [(10, 20), (30, 40)]),
    ("M0,0 10,0 10,10", [(0, 0), (10, 0), (10, 10)]),  # pairs after a moveto are linetos
    ("m10,20 l5,5 h10 v-5 H0 V0 z", [(10, 20), (15, 25), (25, 25), (25, 20), (0, 20), (0, 0), (10, 20)]),
    ("M1.5-2.5L.5.5", [(1.5, -2.5), (0.5, 0.5)]),  # numbers run together, signs and dots separate them
    ("M1e1,2E-1", [(10, 0.2)]),
    # cubic: t = 1/2 gives (p0 + 3 p1 + 3 p2 + p3) / 8
    ("M0,0 C0,1 1,1 1,0", [(0, 0), (0.5, 0.75), (1, 0)]),
    ("M1,1 c0,1 1,1 1,0", [(1, 1), (1.5, 1.75), (2, 1)]),
    ("M0,0 C0,1 1,1 1,0 1,-1 2,-1 2,0", [(0, 0), (0.5, 0.75), (1, 0), (1.5, -0.75), (2, 0)]),  # repeated C
    # smooth cubic: first control point = reflection of the previous second one, (1,0)*2 - (1,1)
    ("M0,0 C0,1 1,1 1,0 S2,-1 2,0", [(0, 0), (0.5, 0.75), (1, 0), (1.5, -0.75), (2, 0)]),
    ("M0,0 c0,1 1,1 1,0 s1,-1 1,0", [(0, 0), (0.5, 0.75), (1, 0), (1.5, -0.75), (2, 0)]),
    ("M0,0 S1,1 2,0", [(0, 0), (0.625, 0.375), (2, 0)]),  # no cubic before: control = current point
    ("M0,0 L1,0 S2,1 3,0", [(0, 0), (1, 0), (1.625, 0.375), (3, 0)]),  # after a line: no reflection
    # quadratic: t = 1/2 gives (p0 + 2 p1 + p2) / 4
    ("M0,0 Q1,2 2,0", [(0, 0), (1, 1), (2, 0)]),
    ("M0,0 Q1,2 2,0 T4,0", [(0, 0), (1, 1), (2, 0), (3, -1), (4, 0)]),  # reflected control (3, -2)
    ("M0,0 q1,2 2,0 t2,0", [(0, 0), (1, 1), (2, 0), (3, -1), (4, 0)]),
])
def test_commands(d, expected):
    np.testing.assert_allclose(one(d), np.array(expected, dtype=float), atol=1e-12)


def test_curve_points_sample_the_curve_at_equal_parameter_steps():
    p = one("M0,0 C0,3 3,3 3,0", n=3)
    t = np.array([1, 2, 3]) / 3
    x = 3 * (1 - t) * t ** 2 * 3 + t ** 3 * 3
    y = 3 * (1 - t) ** 2 * t * 3 + 3 * (1 - t) * t ** 2 * 3
    np.testing.assert_allclose(p[1:], np.stack([x, y], 1), atol=1e-12)


def test_subpaths_and_moveto_after_closepath():
    a, b = parse_svg_path("M0,0 L1,0 M5,5 L6,5")
    np.testing.assert_allclose(a, [(0, 0), (1, 0)])
    np.testing.assert_allclose(b, [(5, 5), (6, 5)])
    a, b = parse_svg_path("M1,1 L2,1 z m1,1 l1,0")
    np.testing.assert_allclose(a, [(1, 1), (2, 1), (1, 1)])
    np.testing.assert_allclose(b, [(2, 2), (3, 2)])  # relative to the closed subpath's start


def test_a_kanjivg_stroke():
    d = "M11,54.25c3.19,0.62,6.25,0.75,9.73,0.5c20.64-1.5,50.39-5.12,68.58-5.24c3.6-0.02,5.77,0.24,7.57,0.49"
    p = one(d, n=4)
    assert p.shape == (13, 2)
    np.testing.assert_allclose(p[0], (11, 54.25))
    np.testing.assert_allclose(p[4], (20.73, 54.75))
    np.testing.assert_allclose(p[8], (20.73 + 68.58, 54.75 - 5.24))
    np.testing.assert_allclose(p[12], (20.73 + 68.58 + 7.57, 54.75 - 5.24 + 0.49))


@pytest.mark.parametrize("d, match", [
    ("L1,1", "must start with a moveto"),
    ("3,4", "must start with a moveto"),
    ("M0,0 A1,1 0 0 1 2,2", "arcs"),
    ("M0,0 L1", "needs 2 numbers"),
    ("M0,0 C1,1 2,2", "needs 6 numbers"),
    ("M0,0 L1,1 #", "unexpected character"),
])
def test_errors_name_the_path_data(d, match):
    with pytest.raises(SVGPathError, match=match) as e:
        parse_svg_path(d)
    assert repr(d) in str(e.value)


def test_curve_points_must_be_positive():
    with pytest.raises(ValueError, match="curve_points"):
        parse_svg_path("M0,0 L1,1", curve_points=0)
