"""``ebsparse s2s-table``: the paper's Table 1/2 from a grid of runs (Dense, Static/RigL/MagRan at
several S), written in the paper's layout, resumable, and with clear errors for bad grids."""

import json
from pathlib import Path

import pytest

from ebsparse.cli import main
from ebsparse.drivers.s2s_table import aggregate, paper_table
from ebsparse.diffusion.config import load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_rigl.yaml"
TINY = ("training.steps=4", "training.batch_size=8", "training.ckpt_every=0", "training.sample_every=0",
        "training.warmup=0", "model.ch=16", "model.ch_mult=[1]", "model.attn_resolutions=[]", "sampling.timesteps=2",
        "sampling.num_samples=16", "sparsity.update_every=2")


@pytest.fixture(autouse=True)
def _isolated_cache(isolated_cache):
    yield


def _args(run_dir, *extra):
    args = ["s2s-table", str(CONFIG), "--run-dir", str(run_dir), "--no-progress", "--threads", "1"]
    for kv in TINY:
        args += ["--set", kv]
    return args + list(extra)


def test_grid_writes_the_paper_table_and_rerun_reads_it_back(tmp_path, capsys, monkeypatch):
    assert main(_args(tmp_path, "--methods", "rigl", "--sparsities", "0.5", "0.9")) == 0
    out = capsys.readouterr().out
    assert "| Method | FID | #Params | Train FLOPs | Test FLOPs | measured step speed-up | images/s ratio |" in out
    data = json.loads((tmp_path / "table.json").read_text())
    runs = {(r["method"], r["sparsity"]) for r in data["runs"]}
    assert runs == {("dense", 0.0), ("rigl", 0.5), ("rigl", 0.9)}
    by = {(g["method"], g["sparsity"]): g for g in data["groups"]}
    assert by[("dense", 0.0)]["params (rel.)"] == 1.0
    # the kept fraction of the sparsified weights is exact; the dense-kept layers raise the model's share
    assert 0.5 < by[("rigl", 0.5)]["params (rel.)"] < 0.6 and 0.1 < by[("rigl", 0.9)]["params (rel.)"] < 0.2
    assert all(g["FID"] > 0 and g["step speed-up"] > 0 for g in data["groups"])
    table = (tmp_path / "table.md").read_text()
    assert "| Dense |" in table and "RigL-DM, S = " in table and "| RigL-DM | 0.9 |" in table
    assert all(g["mask updates"] == 2 for g in data["groups"] if g["method"] == "rigl")  # 4 steps, every 2
    assert "never updated" not in table

    # every run finished: a second call trains nothing and writes the same table
    import ebsparse.drivers.s2s_table as driver

    monkeypatch.setattr(driver, "run_sparse_train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    monkeypatch.setattr(driver, "_dense_row", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert main(_args(tmp_path, "--methods", "rigl", "--sparsities", "0.5", "0.9")) == 0
    assert (tmp_path / "table.md").read_text() == table
    # ... but not runs of another config: the table would state the new settings over the old numbers
    capsys.readouterr()
    assert main(_args(tmp_path, "--methods", "rigl", "--sparsities", "0.5", "--set", "training.steps=8")) == 2
    assert "holds a finished run of another config (training.steps 4 -> 8)" in capsys.readouterr().err


def test_best_level_is_lowest_mean_fid_and_marks_follow_the_paper():
    rows = [{"method": "dense", "sparsity": 0.0, "FID": 30.0, "params (rel.)": 1.0, "train FLOPs": 1.0,
             "test FLOPs": 1.0, "images/s": 100.0, "step speed-up": 1.0}]
    for s, fids in ((0.5, (29.0, 31.0)), (0.9, (27.0, 28.0))):
        for fid in fids:
            rows.append({"method": "magran", "sparsity": s, "FID": fid, "params (rel.)": 1 - s, "train FLOPs": 1 - s,
                         "test FLOPs": 1 - s, "images/s": 150.0, "step speed-up": 2.0})
    rows.append({"method": "static", "sparsity": 0.25, "FID": 40.0, "params (rel.)": 0.75, "train FLOPs": 0.75,
                 "test FLOPs": 0.75, "images/s": 120.0, "step speed-up": 1.2})
    groups = aggregate(rows)
    magran = {g["sparsity"]: g for g in groups if g["method"] == "magran"}
    assert magran[0.5]["FID"] == pytest.approx(30.0) and magran[0.5]["FID std"] == pytest.approx(2 ** 0.5)
    cfg = load_config(CONFIG)
    table = paper_table(groups, cfg).splitlines()
    best = [line for line in table if line.startswith("| <u>MagRan-DM")]
    assert len(best) == 1 and "S = 0.9" in best[0] and "**27.50 ± 0.71**" in best[0] and "1.50x |" in best[0]
    static = next(line for line in table if line.startswith("| Static-DM, S = 0.25"))
    assert "| 40.00 |" in static  # worse than Dense: not bold; one run has no spread
    for row in rows:
        row["mask updates"] = 0
    assert "MagRan-DM: the masks were never updated" in paper_table(aggregate(rows), cfg)


@pytest.mark.parametrize("extra, message", [
    (("--methods", "sgd"), "methods"),
    (("--sparsities", "0.5", "1.0"), "sparsities"),
    (("--seeds", "0"), "--seeds"),
])
def test_bad_grids_are_clean_errors(tmp_path, capsys, extra, message):
    assert main(_args(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
