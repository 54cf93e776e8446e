"""``ebsparse prune``: writes the pruned model and prints the before/after table."""

import pytest
import torch

from ebsparse.cli import main
from ebsparse.models import build_model
from ebsparse.pruning import load_pruned


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    from ebsparse.diffusion.checkpoint import save_checkpoint
    from ebsparse.diffusion.config import load_config

    cfg = load_config("configs/digits.yaml")
    torch.manual_seed(0)
    model, ema = build_model(cfg.model), build_model(cfg.model)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    path = tmp_path_factory.mktemp("run") / "checkpoint.safetensors"
    save_checkpoint(path, tensors, {"step": 0, "config": cfg.to_dict()})
    return path, ema


def test_prune_command(digits_checkpoint, tmp_path, capsys):
    ckpt, ema = digits_checkpoint
    out = tmp_path / "pruned"
    rc = main(["prune", "--config", "configs/digits.yaml", "--checkpoint", str(ckpt), "--ratio", "0.5",
               "--importance", "magnitude", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "| params |" in text and "| MACs |" in text and "| layers changed |" in text and "(ema weights)" in text
    model, recipe = load_pruned(out, build_model)
    assert recipe["extra"]["params_after"] == sum(p.numel() for p in model.parameters())
    assert recipe["extra"]["params_after"] < recipe["extra"]["params_before"] / 3
    # the pruned model carries the EMA weights it was scored on
    assert torch.equal(model.conv_out.bias, ema.conv_out.bias)


def test_prune_command_taylor_with_t_range(tmp_path, capsys):
    rc = main(["prune", "--config", "configs/digits.yaml", "--ratio", "0.3", "--importance", "taylor",
               "--t-range", "0", "260", "--taylor-batch-size", "4", "--out", str(tmp_path / "t")])
    assert rc == 0 and (tmp_path / "t" / "recipe.json").is_file()


@pytest.mark.parametrize("ratio", ["1.0", "-0.2"])
def test_prune_command_rejects_bad_ratio(ratio, tmp_path, capsys):
    rc = main(["prune", "--config", "configs/digits.yaml", "--ratio", ratio, "--out", str(tmp_path / "x")])
    assert rc == 2 and "pruning_ratio must be a number in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_prune_command_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    from ebsparse.diffusion.checkpoint import save_checkpoint
    from ebsparse.diffusion.config import load_config

    cfg = load_config("configs/digits.yaml", ["model.ch=16"])
    model = build_model(cfg.model)
    tensors = {f"{part}/{k}": v for part in ("model", "ema") for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "run" / "checkpoint.safetensors", tensors, {"step": 0, "config": cfg.to_dict()})
    rc = main(["prune", "--config", "configs/digits.yaml", "--checkpoint", str(tmp_path / "run"), "--ratio", "0.5",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "does not match the model of configs/digits.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
