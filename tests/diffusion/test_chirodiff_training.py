"""ChiroDiff end to end on a few KanjiVG characters: `ebsparse train` writes a rendered sample grid,
`ebsparse sample` writes PNGs and the raw sequences, and Static/RigL/MagRan-DM train the GRU sparse."""

import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ebsparse.cli import main
from ebsparse.data.kanjivg import kanjivg_dir
from ebsparse.diffusion.config import load_config
from ebsparse.diffusion.spaces import StrokeSpace, sample_space

CODES = ("04e00", "04e09", "04e8c", "053e3", "05ddd", "06728", "04eba", "05165")


@pytest.fixture
def tiny_config(tmp_path):
    root = tmp_path / "kanji"
    root.mkdir()
    for code in CODES:
        shutil.copy(kanjivg_dir() / f"{code}.svg", root)
    cfg = {
        "model": {"type": "chirodiff", "hidden_size": 8, "num_layers": 1},
        "diffusion": {"loss_reduction": "mean"},
        "data": {"type": "kanjivg", "root": str(root), "seq_len": 12, "image_size": 32},
        "training": {"batch_size": 4, "steps": 3, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01,
                     "log_every": 1, "sample_every": 3, "ckpt_every": 3, "ema_rate": 0.9},
        "sampling": {"sampler": "ddim", "timesteps": 3, "num_samples": 4},
    }
    path = tmp_path / "tiny_chirodiff.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_writes_a_rendered_grid_and_sample_writes_sequences(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run), "--no-progress"]) == 0
    grid = run / "samples" / "step_0000003.png"
    assert grid.is_file()
    assert Image.open(grid).size[0] >= 2 * 32
    out, real = tmp_path / "eval", tmp_path / "real"
    assert main(["sample", str(run), "--num", "3", "--out", str(out), "--data-out", str(real)]) == 0
    assert len(list(out.glob("*.png"))) == 3
    assert sorted(p.name for p in real.glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    first = np.asarray(Image.open(real / "000000.png"))
    assert first.shape == (32, 32) and first.max() > 200 and first.min() == 0  # 一: ink on a black ground
    assert (first > 128).any(1).sum() <= 4  # one horizontal stroke: a few rows
    with np.load(out / "sequences.npz", allow_pickle=False) as f:
        assert f["sequences"].shape == (3, 12, 3) and f["positions"].shape == (3, 13, 2)
        np.testing.assert_allclose(f["positions"][:, 1:], np.cumsum(f["sequences"][..., :2], axis=1), rtol=1e-5)
        np.testing.assert_array_equal(f["drawn"], f["sequences"][..., 2] > 0)
    assert "stroke sequences" in capsys.readouterr().out


def test_sample_space_renders_sequences(tiny_config):
    space = sample_space(load_config(tiny_config))
    assert isinstance(space, StrokeSpace) and space.shape == (12, 3) and not space.clip_denoised
    images = space.to_images(space.noise(2, torch.Generator().manual_seed(0)))
    assert images.shape == (2, 1, 32, 32) and images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("method", ["static", "rigl", "magran"])
def test_sparse_to_sparse_on_chirodiff(tiny_config, tmp_path, method):
    from ebsparse.drivers.sparse_train import run_sparse_train

    cfg = load_config(tiny_config, ["training.steps=4", "training.sample_every=0", f"sparsity.method={method}",
                                    "sparsity.sparsity=0.5", "sparsity.update_every=2", "sparsity.prune_fraction=0.3"])
    run_sparse_train(cfg, tmp_path / method, progress=False, measure=False)
    assert (tmp_path / method / "sparsity_summary.md").is_file()
    from ebsparse.diffusion.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(tmp_path / method / "checkpoint.safetensors")
    gru = {k: v for k, v in tensors.items() if re.fullmatch(r"model/rnn\.weight_(ih|hh)_l0(_reverse)?", k)}
    assert len(gru) == 4  # ih and hh, both directions
    zeros = sum(int((v == 0).sum()) for v in gru.values())
    total = sum(v.numel() for v in gru.values())
    assert zeros >= 0.45 * total  # ERK gives layers their own densities; the GRU as a whole is sparse


def test_paper_configs():
    """Appendix B of the sparse-to-sparse paper: KanjiVG 3 x 96 (Table 2: 416,859 parameters),
    QuickDraw 3 x 128 (736,027); batch 128, AdamW lr 1e-3 wd 1e-2, linear 1e-4 -> 2e-2 over 1000, DDIM 50."""
    from pathlib import Path

    from ebsparse.models import build_model

    configs = Path(__file__).resolve().parents[2] / "configs"
    for name, params in (("kanjivg_chirodiff.yaml", 416_859), ("quickdraw_chirodiff.yaml", 736_027)):
        c = load_config(configs / name)
        with torch.device("meta"):
            assert sum(p.numel() for p in build_model(c.model).parameters()) == params
        assert (c.training.batch_size, c.training.optimizer, c.training.lr, c.training.weight_decay) == \
            (128, "adamw", 1e-3, 1e-2)
        d = c.diffusion
        assert (d.num_timesteps, d.beta_schedule, d.beta_start, d.beta_end) == (1000, "linear", 1e-4, 2e-2)
        assert (c.sampling.sampler, c.sampling.timesteps) == ("ddim", 50)
