"""Issue 25 items 1-2 and 4: the README's path of a model, train → prune → sample → fid → fine-tune,
run as the README writes it."""

import json

import pytest
import torch
from PIL import Image

from ebsparse.cli import main

from .conftest import SMALL, readme_command

FEW = ["--num", "4", "--timesteps", "2", "--batch-size", "4"]


@pytest.fixture
def trained(workdir):
    """``ebsparse train configs/digits.yaml`` (README line) with two steps: runs/digits."""
    assert main([*readme_command("ebsparse train configs/digits.yaml"), *SMALL]) == 0
    return workdir / "runs" / "digits"


def test_prune_sample_fid_and_fine_tune_a_pruned_folder(trained, workdir, capsys):
    assert main(readme_command("ebsparse prune")) == 0
    pruned = workdir / "runs" / "digits-pruned-0.5"
    out = capsys.readouterr().out
    assert (pruned / "recipe.json").is_file() and f"ebsparse sample {pruned.relative_to(workdir)}" in out

    assert main([*readme_command("ebsparse sample runs/digits-pruned-0.5"), *FEW]) == 0
    assert len(list((pruned / "samples" / "eval").glob("*.png"))) == 4 and (workdir / "pruned.png").is_file()
    assert "pruned, step 2" in capsys.readouterr().out
    assert main(["fid", str(pruned.relative_to(workdir)), "--domain", "digits"]) == 0
    assert "digits domain FID:" in capsys.readouterr().out

    # fine-tune: the pruned weights are where training starts; the checkpoint carries the architecture
    finetune = readme_command("ebsparse train configs/digits.yaml --init-from")
    assert main([*finetune, *SMALL]) == 0
    run = workdir / "runs" / "digits-pruned-ft"
    from ebsparse.drivers.checkpoints import model_from_checkpoint

    model, _, meta = model_from_checkpoint(run)
    pruned_model, _, _ = model_from_checkpoint(pruned)
    assert meta["pruned"] and meta["step"] == 2
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in pruned_model.parameters())
    assert main([*finetune, *SMALL, "--set", "training.steps=3", "--resume"]) == 0  # no --init-from retyped
    assert main([*finetune[:2], "--run-dir", str(run), *SMALL, "--set", "training.steps=4", "--resume"]) == 0
    assert model_from_checkpoint(run)[2]["step"] == 4
    assert main(["sample", str(run), *FEW]) == 0 and "pruned, step 4" in capsys.readouterr().out


def test_prune_refuses_to_overwrite_without_force(trained, workdir, capsys):
    argv = readme_command("ebsparse prune")
    assert main(argv) == 0
    recipe = workdir / "runs" / "digits-pruned-0.5" / "recipe.json"
    before = recipe.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a pruned model; pass --force" in err and len(err.strip().splitlines()) == 1
    assert recipe.read_bytes() == before
    assert main([*argv, "--force"]) == 0


def test_prune_takes_the_config_from_the_checkpoint(trained, workdir, capsys):
    argv = readme_command("ebsparse prune")
    assert "--config" not in argv
    assert main(argv) == 0
    recipe = json.loads((workdir / "runs" / "digits-pruned-0.5" / "recipe.json").read_text())
    assert recipe["base"]["ch"] == 32 and recipe["extra"]["experiment"]["training"]["steps"] == 2
    # a config of another model: one line saying what the checkpoint was trained with
    (workdir / "other.yaml").write_text((workdir / "configs" / "digits.yaml").read_text().replace("ch: 32", "ch: 16"))
    capsys.readouterr()
    assert main([*argv, "--config", "other.yaml", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "it was trained with model {" in err and "'ch': 32" in err
    assert "omit --config" in err and not (workdir / "x").exists()


def test_sample_grid_is_enlarged_and_captioned(trained, workdir, capsys):
    assert main([*readme_command("ebsparse sample runs/digits "), *FEW]) == 0
    out = capsys.readouterr().out
    assert "dense, step 2; ddim, 2 of 1000 timesteps (uniform), eta 0" in out
    grid = Image.open(workdir / "grid.png")
    # 4 samples of 16 px in a 2 x 2 grid: each enlarged to 64 px, plus a caption strip on top
    assert grid.width >= 2 * 64 and grid.height > grid.width
    import numpy as np

    top = np.asarray(grid.convert("L"))[:14]
    assert (top > 128).any(), "the caption strip holds no text"


def test_save_grid_enlarges_small_images_by_default(tmp_path):
    """The demo's samples_*.png and the trainer's grids go through save_grid's default."""
    from ebsparse.diffusion.images import save_grid

    x = torch.rand(64, 1, 16, 16) * 2 - 1
    img = Image.open(save_grid(x, tmp_path / "g.png"))
    assert img.width >= 8 * 64
    assert Image.open(save_grid(x, tmp_path / "raw.png", min_cell=0)).width == 8 * 16 + 9 * 2
    big = Image.open(save_grid(torch.zeros(4, 3, 96, 96), tmp_path / "big.png"))
    assert big.width == 2 * 96 + 3 * 2  # already large: kept


def test_training_grids_are_enlarged_and_captioned(workdir):
    assert main([*readme_command("ebsparse train configs/digits.yaml"), *SMALL, "--set", "training.sample_every=2"]) == 0
    grid = Image.open(workdir / "runs" / "digits" / "samples" / "step_0000002.png")
    assert grid.width >= 2 * 64 and grid.height > grid.width  # 4 samples enlarged, caption strip on top
