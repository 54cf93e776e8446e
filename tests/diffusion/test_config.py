"""YAML configs: every shipped config loads; errors name the file and key."""

from pathlib import Path

import pytest

from ebsparse.diffusion.config import ExperimentConfig, apply_overrides, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_all_shipped_configs_are_present():
    assert {p.name for p in CONFIGS} >= {"cifar10.yaml", "celeba64.yaml", "church.yaml", "bedroom.yaml", "digits.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_round_trips(path):
    cfg = load_config(path)
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_paper_hyperparameters():
    c = load_config(CONFIGS[0].parent / "cifar10.yaml")
    assert (c.training.lr, c.training.batch_size, c.training.ema_rate, c.training.grad_clip) == (2e-4, 128, 0.9999, 1.0)
    assert c.diffusion.var_type == "fixedlarge" and c.model["dropout"] == 0.1
    church = load_config(CONFIGS[0].parent / "church.yaml")
    assert church.diffusion.var_type == "fixedsmall" and church.training.ema_rate == 0.999


def test_errors_name_the_problem(tmp_path, digits_config_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"training: unknown keys \['stpes'\]"):
        load_config(digits_config_path, ["training.stpes=3"])
    with pytest.raises(ValueError, match="training.optimizer='sgd'"):
        load_config(digits_config_path, ["training.optimizer=sgd"])
    with pytest.raises(ValueError, match="num_groups"):
        load_config(digits_config_path, ["model.ch=20"])
    with pytest.raises(ValueError, match="data.root is required"):
        load_config(digits_config_path, ["data.type=image_folder"])
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        apply_overrides({}, ["steps=3"])
    assert apply_overrides({}, ["training.lr=1e-3", "model.ch_mult=[1, 2]"]) == {
        "training": {"lr": 1e-3}, "model": {"ch_mult": [1, 2]}}


def test_algorithm_sections_are_kept_verbatim_and_round_trip(digits_config_path):
    import yaml

    raw = yaml.safe_load(Path(digits_config_path).read_text())
    raw["sparsity"] = {"method": "rigl", "sparsity": 0.9}
    cfg = ExperimentConfig.from_dict(raw)
    assert cfg.algorithms == {"sparsity": {"method": "rigl", "sparsity": 0.9}}
    assert ExperimentConfig.from_dict(cfg.to_dict()).algorithms == cfg.algorithms
    raw["earlybird"] = [1, 2]
    with pytest.raises(ValueError, match="earlybird"):
        ExperimentConfig.from_dict(raw)


@pytest.mark.parametrize("override, message", [
    # wrong types: the full dotted key and what was expected
    ("training.lr=fast", "training.lr: expected a number, got 'fast'"),
    ("training.steps=ten", "training.steps: expected an integer, got 'ten'"),
    ("training.betas=[0.9]", "training.betas: expected a list of 2 numbers, got [0.9]"),
    ("model.ch_mult=2", "model.ch_mult: expected a list of integers, got 2"),
    ("model.dropout=lots", "model.dropout: expected a number, got 'lots'"),
    ("diffusion.num_timesteps=1.5", "diffusion.num_timesteps: expected an integer, got 1.5"),
    ("data.random_flip=sometimes", "data.random_flip: expected true or false, got 'sometimes'"),
    ("sampling.timesteps=[10]", "sampling.timesteps: expected an integer, got [10]"),
    ("training.grad_clip=-1", "training.grad_clip must be >= 0 (0 = no clipping), got -1.0"),
    # model and data that cannot work together, caught when the config is read
    ("data.image_size=15", "data.image_size=15 must be divisible by 2"),
    ("data.channels=3", "data.channels=3 does not match model.in_channels=1"),
])
def test_type_and_compatibility_errors_name_the_key(digits_config_path, override, message):
    with pytest.raises(ValueError) as info:
        load_config(digits_config_path, [override])
    assert message in str(info.value)


def test_numbers_yaml_reads_as_strings_are_still_numbers(digits_config_path):
    assert load_config(digits_config_path, ["training.lr='2e-4'"]).training.lr == 2e-4


def test_one_rule_for_every_config_dataclass():
    """Every config dataclass reads through the same helper: the same wording of unknown keys and
    wrong types, under its own section key."""
    from ebsparse.data import DataConfig
    from ebsparse.diffusion.schedule import DiffusionConfig
    from ebsparse.earlybird.config import EarlyBirdConfig
    from ebsparse.models import DDPMUNetConfig, DiTConfig
    from ebsparse.pruning import PruningConfig, PruningError
    from ebsparse.s2s import SparsityConfig

    readers = {"data": DataConfig.from_dict, "diffusion": DiffusionConfig.from_dict,
               "earlybird": EarlyBirdConfig.from_dict, "model": DDPMUNetConfig.from_dict,
               "pruning": PruningConfig.from_dict, "sparsity": SparsityConfig.from_dict}
    for key, read in readers.items():
        with pytest.raises(ValueError, match=rf"^{key}: unknown keys \['typo'\]; expected a subset of"):
            read({"typo": 1})
        with pytest.raises(ValueError, match=rf"^{key}: expected a mapping, got list"):
            read([1])
    with pytest.raises(ValueError, match=r"^model: unknown keys \['typo'\]; expected a subset of \[.*'size'"):
        DiTConfig.from_dict({"typo": 1})
    with pytest.raises(PruningError, match=r"^pruning.pruning_ratio: expected a number, got 'half'"):
        PruningConfig.from_dict({"pruning_ratio": "half"})
    with pytest.raises(ValueError, match=r"^earlybird.eta: expected a number, got 'fast'"):
        EarlyBirdConfig.from_dict({"eta": "fast"})
    with pytest.raises(ValueError, match=r"^sparsity.update_every: expected an integer, got 'often'"):
        SparsityConfig.from_dict({"update_every": "often"})


def test_a_bad_set_is_named_alone(digits_config_path):
    """A key found in the message also matched the list of valid keys an unknown-key error prints:
    `--set training.stepz=10` blamed the good `--set training.steps=2` too."""
    with pytest.raises(ValueError) as info:
        load_config(digits_config_path, ["training.steps=2", "training.sample_every=0", "training.stepz=10"])
    assert str(info.value).startswith("--set training.stepz=10: training: unknown keys ['stepz']")
