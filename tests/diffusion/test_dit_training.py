"""DiT trains end to end: class labels from the data, label dropout from the trainer's generator
(so a resume is bit-identical), Early-Bird (EB, TA-EB) and sparse-to-sparse on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ebsparse.diffusion.checkpoint import load_checkpoint
from ebsparse.diffusion.config import load_config
from ebsparse.diffusion.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_dit.yaml"
TINY = ["data.image_size=8", "model.input_size=8", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
        "training.batch_size=8", "training.warmup=0", "training.steps=6", "training.ckpt_every=3",
        "training.log_every=1", "training.sample_every=0", "sampling.timesteps=2", "sampling.num_samples=4",
        "model.class_dropout_prob=0.5"]


class Crash(RuntimeError):
    pass


def test_dit_trains_on_digit_labels_and_resumes_bit_identically(tmp_path, monkeypatch):
    cfg = load_config(CONFIG, TINY)
    seen = []
    from ebsparse.models.dit import LabelEmbedder

    forward = LabelEmbedder.forward

    def spy(self, labels, train, generator=None):
        seen.append((labels.clone(), generator))
        return forward(self, labels, train, generator)

    monkeypatch.setattr(LabelEmbedder, "forward", spy)
    whole = Trainer(cfg, tmp_path / "whole")
    out = whole.fit(progress=False)
    assert torch.isfinite(torch.tensor(out["loss"]))
    labels, generator = seen[0]
    assert generator is whole.generator  # label dropout drawn from the trainer's RNG
    assert torch.equal(labels, whole.dataset.labels[whole.order.indices(0)])

    def crash(trainer, stats):
        if trainer.step == 5:
            raise Crash()

    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "split").fit(progress=False, callback=crash)
    Trainer(cfg, tmp_path / "split").fit(resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_dit_needs_enough_classes(tmp_path):
    with pytest.raises(ValueError, match="model.num_classes=5 is too small"):
        Trainer(load_config(CONFIG, [*TINY, "model.num_classes=5"]), tmp_path / "run")


def test_eb_and_ta_eb_on_dit_prune_heads_and_keep_the_residual_width(tmp_path):
    from ebsparse.drivers.eb_pipeline import EBRun
    from ebsparse.models import build_model
    from ebsparse.pruning import load_pruned

    cfg = load_config(CONFIG, [*TINY, "model.num_heads=4", "training.steps=8", "earlybird.pseudo_epoch_steps=2",
                               "earlybird.max_search_steps=4", "earlybird.eb_budget=1.0",
                               "earlybird.region_budget=1.0", "earlybird.eval_samples=4"])
    pipe = EBRun(cfg, tmp_path / "eb", ta_eb=True, progress=False, log=lambda s: None, fid=False)
    pipe.run()
    eb, _ = load_pruned(tmp_path / "eb" / "models" / "eb", build_model)
    attn = eb.blocks[0].attn
    assert (attn.num_heads, attn.proj.in_features, attn.qkv.in_features) == (2, 16, 32)  # heads go, width stays
    assert eb.blocks[0].mlp.fc1.out_features == 64
    assert (tmp_path / "eb" / "table.md").read_text().count("|") > 20


@pytest.mark.parametrize("method", ["static", "rigl", "magran"])
def test_sparse_to_sparse_on_dit_runs_the_projections_as_sparse_linears(tmp_path, method):
    from ebsparse.drivers.sparse_train import run_sparse_train
    from ebsparse.nn import SparseLinear

    cfg = load_config(CONFIG, [*TINY, f"sparsity.method={method}", "sparsity.sparsity=0.8",
                               "sparsity.update_every=2"])
    out = run_sparse_train(cfg, tmp_path / method, progress=False)
    assert out["step"] == 6
    tensors, _ = load_checkpoint(tmp_path / method / "checkpoint.safetensors")
    qkv_mask = tensors["model/blocks.0.attn.qkv.mask"]
    assert qkv_mask.shape == (96, 32) and 0.05 < qkv_mask.float().mean() < 0.6
    assert "model/blocks.0.attn.proj.mask" in tensors and SparseLinear  # out projection sparse too
