"""The ``earlybird:`` section: defaults from the papers, clear errors for bad values and unknown keys."""

import pytest

from ebsparse.earlybird.config import EarlyBirdConfig
from ebsparse.earlybird.regions import PRESETS


def test_defaults_are_the_papers():
    c = EarlyBirdConfig.from_dict({}, 1000)
    assert (c.eta, c.queue_length, c.pseudo_epoch_steps) == (0.1, 5, None)
    assert c.regions == PRESETS["cifar10-3"]
    assert c.tracked_ratios(ta_eb=True) == [0.3, 0.6, 0.8]
    assert EarlyBirdConfig.from_dict(c.to_dict(), 1000) == c
    assert c.region_training == "sequential"  # full batches per region, as the papers' region models
    # budgets: EB trains as long as dense, each region a quarter of it (CIFAR-10: 800K vs 200K)
    assert c.eb_finetune_steps(800_000, 12_000) == 788_000
    assert c.region_train_steps(2, 800_000, 12_000) == 188_000


def test_explicit_budgets_per_region():
    c = EarlyBirdConfig.from_dict({"region_steps": [5, 6, 7], "finetune_steps": 9}, 1000)
    assert [c.region_train_steps(i, 800, 100) for i in range(3)] == [5, 6, 7]
    assert c.eb_finetune_steps(800, 100) == 9
    assert EarlyBirdConfig.from_dict(c.to_dict(), 1000) == c
    c = EarlyBirdConfig.from_dict({"region_steps": 4, "region_budget": 0.1}, 1000)
    assert c.region_train_steps(1, 800, 100) == 4
    assert EarlyBirdConfig.from_dict({"region_budget": 0.1}, 1000).region_train_steps(0, 800, 100) == 0


@pytest.mark.parametrize("d, match", [
    ({"etaa": 0.1}, "unknown keys \\['etaa'\\]"),
    ({"eta": -0.1}, "earlybird.eta"),
    ({"queue_length": 1}, "earlybird.queue_length"),
    ({"pruning_ratio": 1.0}, "earlybird.pruning_ratio"),
    ({"importance": "l1"}, "earlybird.importance"),
    ({"region_importance": "random"}, "earlybird.region_importance"),
    ({"region_training": "parallel"}, "earlybird.region_training"),
    ({"pseudo_epoch_steps": 0}, "earlybird.pseudo_epoch_steps"),
    ({"finetune_steps": 2.5}, "earlybird.finetune_steps"),
    ({"baselines": ["dense", "lottery"]}, "earlybird.baselines"),
    ({"eval_samples": 0}, "earlybird.eval_samples"),
    ({"region_steps": [5, 6]}, "earlybird.region_steps must be one int >= 0 per region \\(3 regions\\)"),
    ({"region_steps": -1}, "earlybird.region_steps"),
    ({"eb_budget": 0}, "earlybird.eb_budget"),
    ({"region_budget": "quarter"}, "earlybird.region_budget"),
    ({"regions": [[0, 500, 0.3]]}, "reach t = 999"),
])
def test_bad_values_name_the_key(d, match):
    with pytest.raises(ValueError, match=match):
        EarlyBirdConfig.from_dict(d, 1000)


def test_config_file_section_reaches_the_pipeline(tmp_path):
    from tests.earlybird.conftest import tiny_config

    from ebsparse.drivers.eb_pipeline import EBRun

    run = EBRun(tiny_config("earlybird.eta=0.05", "earlybird.regions=celeba-2"), tmp_path, ta_eb=True)
    assert run.eb.eta == 0.05 and len(run.eb.regions) == 2
    assert [s.name for s in run.ticket_specs()] == ["eb", "region0", "region1"]
    with pytest.raises(ValueError, match="unknown keys"):
        EBRun(tiny_config("earlybird.queue=3"), tmp_path)
