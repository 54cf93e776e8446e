"""Sparse-to-sparse training through the Trainer: exact resume, EMA exactly sparse when saved,
the summary row of ``ebsparse train``."""

import copy
from pathlib import Path

import pytest
import torch

from ebsparse.diffusion.checkpoint import load_checkpoint
from ebsparse.diffusion.config import load_config
from ebsparse.diffusion.trainer import Trainer
from ebsparse.s2s import SparsityConfig
from ebsparse.drivers.sparse_train import summary_row, summary_table
from ebsparse.s2s.trainer_plugin import SparsityPlugin

DIGITS = Path(__file__).resolve().parents[2] / "configs" / "digits.yaml"


@pytest.fixture(autouse=True)
def _isolated_cache(isolated_cache):
    yield


def tiny_config(steps: int, method: str = "rigl", overrides=(), **sparsity):
    cfg = load_config(DIGITS, [
        f"training.steps={steps}", "training.batch_size=8", "training.ckpt_every=0", "training.log_every=1",
        "training.sample_every=0", "training.warmup=2", "model.dropout=0.1", "training.ema_rate=0.9",
        "training.weight_decay=0.01", "model.ch=16", "model.ch_mult=[1]", "model.attn_resolutions=[]",
        "sampling.timesteps=3", "sampling.num_samples=2", *overrides,
    ])
    cfg.algorithms["sparsity"] = {"method": method, "sparsity": 0.8, "update_every": 3, "prune_fraction": 0.3,
                                  "backend": "native", **sparsity}
    return cfg


def _trainer(cfg, run_dir):
    plugin = SparsityPlugin(SparsityConfig.from_dict(cfg.algorithms["sparsity"]))
    return Trainer(cfg, run_dir, plugins=[plugin]), plugin


# The digits config's own model and batch at two threads: enough tasks per kernel call for both
# threads to share every gradient sum (the tiny model's convs run as one task, which hid per-thread
# sums that made runs differ).
DIGITS_SIZE = ("model.ch=32", "model.ch_mult=[1,2]", "model.attn_resolutions=[8]", "training.batch_size=32")


# Block granularity: the block masks, the moments reset per block and the count of regrown weights
# must all survive the checkpoint.
BLOCKS = {"granularity": "block", "block": [8, 8]}


@pytest.mark.parametrize("method,sparsity", [("rigl", {}), ("magran", {}), ("rigl", BLOCKS)])
def test_resume_is_exact(tmp_path, method, sparsity):
    n, k = 8, 4  # updates at steps 3 and 6: one before the checkpoint, one after
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        full, _ = _trainer(tiny_config(n, method, DIGITS_SIZE, **sparsity), tmp_path / "full")
        full.fit(progress=False)
        first, _ = _trainer(tiny_config(k, method, DIGITS_SIZE, **sparsity), tmp_path / "split")
        first.fit(progress=False)
        second, plugin = _trainer(tiny_config(n, method, DIGITS_SIZE, **sparsity), tmp_path / "split")
        second.fit(resume=True, progress=False)
    finally:
        torch.set_num_threads(previous)
    assert plugin.sparsifier.steps == n and plugin.sparsifier.updates == 2
    assert plugin.sparsifier.regrown > 0
    a, meta_a = full.state_tensors()
    b, meta_b = second.state_tensors()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert meta_a["plugins"] == meta_b["plugins"]


def test_masks_ema_and_counts_in_checkpoint(tmp_path):
    trainer, plugin = _trainer(tiny_config(7), tmp_path)
    sp = plugin.sparsifier
    kept = {t.name: int(t.mask.sum()) for t in sp.targets}
    trainer.fit(progress=False)
    assert sp.updates == 2
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["plugins"]["sparsity"]["steps"] == 7
    for t in sp.targets:
        mask = tensors[f"model/{t.name.rpartition('.')[0]}.mask"]
        assert torch.equal(mask, t.mask) and int(mask.sum()) == kept[t.name]
        assert (tensors[f"model/{t.name}"][~mask] == 0).all()
        assert (tensors[f"ema/{t.name}"][~mask] == 0).all(), t.name  # EMA exactly sparse when saved
        assert (tensors[f"ema/{t.name}"][mask] != 0).any()


def test_summary_row_reports_paper_columns(tmp_path):
    trainer, plugin = _trainer(tiny_config(2, "static"), tmp_path)
    trainer.fit(progress=False)
    row = summary_row(trainer, plugin, fid=12.5, timing={"speedup": 1.1, "dense_step_s": 1.1, "sparse_step_s": 1.0})
    sp = plugin.sparsifier
    assert row["params"] == row["dense params"] - (sp.total - sp.kept)
    assert 0 < row["test FLOPs"] < 1 and row["train FLOPs"] == pytest.approx(row["test FLOPs"])
    table = summary_table([row])
    assert "| static | 0.8 | 12.50 |" in table and "1.10x" in table


def test_model_from_checkpoint_and_sample_cli(tmp_path):
    from ebsparse.cli import main
    from ebsparse.drivers.checkpoints import model_from_checkpoint

    trainer, plugin = _trainer(tiny_config(4), tmp_path)
    trainer.fit(progress=False)
    model, cfg, meta = model_from_checkpoint(tmp_path)
    assert meta["step"] == 4 and "sparsity" in cfg.algorithms
    loaded = dict(model.named_buffers())
    for t in plugin.sparsifier.targets:
        assert torch.equal(loaded[t.name.rpartition(".")[0] + ".mask"], t.mask)
    reference = copy.deepcopy(trainer.model)
    trainer.ema.copy_to(reference)  # what Trainer.sample runs
    x, steps = torch.randn(2, 1, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(model(x, steps), reference.eval()(x, steps))
    assert main(["sample", str(tmp_path), "--num", "2", "--out", str(tmp_path / "png"), "--threads", "1"]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 2


@pytest.mark.parametrize("granularity", [{}, {"granularity": "block", "block": [8, 8]}])
def test_rigl_trains_under_bf16(tmp_path, granularity):
    """Under bf16 autocast the sparse convs take the bf16 activations of the dense layers before
    them (the first step failed with a dtype error) and RigL updates its masks; the master weights
    stay float32 and zero outside the masks."""
    cfg = tiny_config(4, overrides=["training.precision=bf16", "model.ch=32", "model.ch_mult=[1,2]"],
                      backend="auto", **granularity)
    trainer, plugin = _trainer(cfg, tmp_path)
    trainer.fit(progress=False)
    assert plugin.sparsifier.updates == 1
    sparse = [m for m in trainer.model.modules() if hasattr(m, "mask")]
    assert sparse and all(m.weight.dtype == torch.float32 for m in sparse)
    assert all(not m.weight[~m.mask].any() for m in sparse)


def test_step_speedup_is_measured_without_the_dense_weight_gradient(monkeypatch):
    """A run ending one step before a RigL update leaves every layer asking for the dense weight
    gradient; the summary's speed-up measured that step (1.01x where the ordinary step gives 1.7x)."""
    import ebsparse.drivers.sparse_train as sparse_train
    from ebsparse import SparseLinear

    sparse = torch.nn.Sequential(SparseLinear(8, 8, density=0.5))
    sparse[0].dense_weight_grad = True
    seen = []
    monkeypatch.setattr(sparse_train, "_step_seconds",
                        lambda model, inputs, rounds: seen.append([getattr(m, "dense_weight_grad", None)
                                                                   for m in model.modules()]) or 1.0)
    timing = sparse_train.measure_step_speedup(sparse, torch.nn.Sequential(torch.nn.Linear(8, 8)),
                                               (torch.randn(2, 8),))
    assert timing["speedup"] == timing["speedup_paired_median"] == 1.0
    assert [flags for flags in seen if False in flags] == [[None, False]] * 5  # the sparse model's rounds
    assert sparse[0].dense_weight_grad  # the trained model itself is left as it was


@pytest.mark.parametrize("allow", [False, True])
def test_resume_with_a_changed_sparsity_section_names_the_keys(tmp_path, allow):
    """The config check ran after the state loaded, so a changed sparsity level failed on the EMA's
    missing mask keys, and --allow-config-change went on into a dump of both sections."""
    first, _ = _trainer(tiny_config(2), tmp_path)
    first.fit(progress=False)
    changed = tiny_config(4)
    changed.algorithms["sparsity"]["sparsity"] = 0.7
    second, _ = _trainer(changed, tmp_path)
    with pytest.raises(ValueError, match=r"changed sparsity section \(sparsity.sparsity 0.8 -> 0.7\)"):
        second.fit(resume=True, progress=False, allow_config_change=allow)


def test_images_per_s_leaves_out_the_step_that_measures_the_backends(tmp_path):
    """The first step of a process times every layer's backend candidates (11.5 s against ~0.3 s a
    step in the audit's run): counted, it cut a 20-step run's images/s by a third."""
    trainer, _ = _trainer(tiny_config(3, backend="auto"), tmp_path)
    trainer.fit(progress=False)
    assert trainer.timed_steps == 2 and trainer.images_per_s() > 0
    one, _ = _trainer(tiny_config(1), tmp_path / "one")
    one.fit(progress=False)
    assert one.timed_steps == 1  # the only step there is still counts
