"""``ebsparse train`` with a ``sparsity:`` section writes the paper's summary table."""

import json
from pathlib import Path

import pytest

from ebsparse.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_rigl.yaml"


@pytest.fixture(autouse=True)
def _isolated_cache(isolated_cache):
    yield


@pytest.mark.slow
@pytest.mark.parametrize("method", ["static", "rigl", "magran"])
def test_train_writes_summary(tmp_path, capsys, method):
    args = ["train", str(CONFIG), "--run-dir", str(tmp_path), "--no-progress", "--threads", "1"]
    for kv in ("training.steps=6", "training.batch_size=8", "training.ckpt_every=0", "training.sample_every=0",
               "model.ch=16", "model.ch_mult=[1]", "model.attn_resolutions=[]", "sampling.timesteps=3",
               "sampling.num_samples=16", "sparsity.update_every=3", f"sparsity.method={method}"):
        args += ["--set", kv]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| method | sparsity | FID | params | params (rel.) | train FLOPs | test FLOPs | images/s | step speed-up |" in out
    row = json.loads((tmp_path / "sparsity_summary.json").read_text())
    assert row["method"] == method and row["FID"] > 0 and row["step speed-up"] > 0 and row["images/s"] > 0
    assert row["mask updates"] == (0 if method == "static" else 2)
    assert (tmp_path / "sparsity_summary.md").read_text().startswith("| method |")


def test_unknown_sparsity_key_is_a_clean_cli_error(tmp_path, capsys):
    args = ["train", str(CONFIG), "--run-dir", str(tmp_path), "--set", "sparsity.drop_fraction=0.3"]
    assert main(args) == 2
    assert "unknown keys ['drop_fraction']" in capsys.readouterr().err

