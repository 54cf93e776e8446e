"""Auto's choices can be saved and restored (what a resumed training run does): a restored key is
not measured again, and a bad record is an error naming the argument."""

import pytest
import torch

from ebsparse.backends import select


@pytest.fixture(autouse=True)
def _fresh_choices():
    select.clear()
    yield
    select.clear()


def _never(name):
    raise AssertionError(f"a restored choice was measured again ({name})")


def test_a_restored_choice_is_taken_without_measuring():
    device, dtype, key = torch.device("cpu"), torch.float32, ((5, 8), (6, 8), 0.5, False)
    measured = []
    first = select.choose("linear", device, dtype, lambda name: measured.append(name) or 1.0, key)
    assert measured and first == "dense"  # all equal: a sparse backend must beat dense by the margin
    saved = select.recorded()
    assert list(saved.values()) == ["dense"]
    select.clear()
    other = {k: "native" for k in saved}
    select.restore(other)
    assert select.choose("linear", device, dtype, _never, key) == "native"
    assert select.recorded() == other


@pytest.mark.parametrize("saved, match", [
    (["dense"], "expected a dict"),
    ({"k": 3}, "expected a dict"),
    ({"k": "no_such_backend"}, r"\['no_such_backend'\] are not registered"),
])
def test_bad_records_are_refused(saved, match):
    with pytest.raises(ValueError, match=f"saved: .*{match}"):
        select.restore(saved)
    assert select.recorded() == {}
