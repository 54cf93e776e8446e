"""ER/ERK layer densities against a direct computation of the formulas in reference-notes.md."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.s2s import layer_densities, raw_density


def direct_erk(shapes, s, power=1.0, kernel=True):
    """The RigL code base's loop written out independently: ε over the non-dense layers, dense
    layers subtract their ⌊s·N⌋ zeros from the budget, the largest raw joins the dense set while ε·raw > 1."""
    def raw(shape):
        dims = shape if kernel else shape[:2]
        return (sum(dims) / math.prod(dims)) ** power

    dense = set()
    while True:
        num = sum(math.prod(v) - math.floor(s * math.prod(v)) for k, v in shapes.items() if k not in dense)
        num -= sum(math.floor(s * math.prod(v)) for k, v in shapes.items() if k in dense)
        den = sum(raw(v) * math.prod(v) for k, v in shapes.items() if k not in dense)
        eps = num / den
        top = max(raw(v) for k, v in shapes.items() if k not in dense)
        if eps * top > 1:
            dense |= {k for k, v in shapes.items() if k not in dense and raw(v) == top}
            continue
        return {k: 1.0 if k in dense else eps * raw(v) for k, v in shapes.items()}


SHAPES = {"conv_in": (16, 3, 3, 3), "conv": (32, 16, 3, 3), "fc": (10, 512), "big": (256, 256), "tiny": (4, 3)}


def test_erk_matches_direct_formula():
    got = layer_densities(SHAPES, 0.9, "erk")
    want = direct_erk(SHAPES, 0.9)
    assert got == pytest.approx(want, rel=1e-12)
    # the papers' ER for linear layers is the same formula on a 2-D weight
    assert raw_density((10, 512), "erk") == pytest.approx((10 + 512) / (10 * 512))


def test_dense_layer_redistribution():
    # at 50% the small layers' ε·raw exceeds 1 in successive rounds: tiny, then fc and conv_in
    # become dense, and the two large layers pay for them
    got = layer_densities(SHAPES, 0.5, "erk")
    assert got == pytest.approx(direct_erk(SHAPES, 0.5), rel=1e-12)
    assert {k for k, d in got.items() if d == 1.0} == {"tiny", "fc", "conv_in"}
    assert layer_densities(SHAPES, 0.9, "erk")["tiny"] == 1.0
    kept = sum(got[k] * math.prod(v) for k, v in SHAPES.items())
    budget = sum(math.prod(v) - math.floor(0.5 * math.prod(v)) for v in SHAPES.values())
    assert kept == pytest.approx(budget)


def test_er_ignores_kernel_dims_and_power_scale():
    assert raw_density((32, 16, 3, 3), "er") == pytest.approx((32 + 16) / (32 * 16))
    assert layer_densities(SHAPES, 0.5, "er") == pytest.approx(direct_erk(SHAPES, 0.5, kernel=False))
    assert layer_densities(SHAPES, 0.8, "erk", 0.5) == pytest.approx(direct_erk(SHAPES, 0.8, power=0.5))
    # power 0: every raw is 1, so ERK degenerates to (almost exactly) uniform
    flat = layer_densities(SHAPES, 0.8, "erk", 0.0)
    assert all(abs(d - 0.2) < 1e-3 for d in flat.values())


def test_uniform_and_custom_sparsity():
    assert set(layer_densities(SHAPES, 0.75, "uniform").values()) == {0.25}
    got = layer_densities(SHAPES, 0.9, "erk", custom_sparsity={"big": 0.5})
    assert got["big"] == 0.5
    rest = {k: v for k, v in SHAPES.items() if k != "big"}
    assert {k: got[k] for k in rest} == pytest.approx(direct_erk(rest, 0.9))
    with pytest.raises(ValueError, match="custom_sparsity"):
        layer_densities(SHAPES, 0.9, custom_sparsity={"nope": 0.5})
    with pytest.raises(ValueError, match="sparsity"):
        layer_densities(SHAPES, 1.0)
    with pytest.raises(ValueError, match="distribution"):
        layer_densities(SHAPES, 0.5, "erdos")


shape_st = st.one_of(
    st.tuples(st.integers(1, 64), st.integers(1, 64)),
    st.tuples(st.integers(1, 32), st.integers(1, 32), st.sampled_from([1, 3]), st.sampled_from([1, 3])),
)


@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4), shape_st, min_size=1, max_size=6),
       st.floats(0.0, 0.99), st.sampled_from(["erk", "er", "uniform"]))
def test_densities_valid_and_meet_the_budget(shapes, s, dist):
    got = layer_densities(shapes, s, dist)
    assert all(0.0 <= d <= 1.0 + 1e-12 for d in got.values())
    if dist != "uniform":
        kept = sum(got[k] * math.prod(v) for k, v in shapes.items())
        budget = sum(math.prod(v) - math.floor(s * math.prod(v)) for v in shapes.values())
        if any(d < 1.0 for d in got.values()):  # unless everything had to go dense
            assert kept == pytest.approx(budget, rel=1e-9)
