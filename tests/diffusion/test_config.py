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
