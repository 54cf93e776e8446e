"""bench/timing.py's paired speed-up: each round's baseline over its provider, the median of those."""

import pytest

from bench.timing import paired_speedup_median


def test_each_round_is_its_own_pair():
    # min / min = 2.0 comes from one unusual round; the median of the rounds' own ratios is 1.5x.
    baseline = [3.0, 1.0, 3.0]
    provider = [2.0, 0.5, 2.0]
    assert min(baseline) / min(provider) == 2.0
    assert paired_speedup_median(baseline, provider) == pytest.approx(1.5)


@pytest.mark.parametrize("baseline, provider", [([1.0], [1.0, 2.0]), ([], [])])
def test_rounds_that_do_not_pair_are_refused(baseline, provider):
    with pytest.raises(ValueError, match="equally long, non-empty"):
        paired_speedup_median(baseline, provider)
