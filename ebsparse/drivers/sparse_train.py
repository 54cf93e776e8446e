"""Sparse-to-sparse training (front layer; ``ebsparse train CONFIG`` when the config has a
``sparsity:`` section): train with the chosen method through
:class:`ebsparse.s2s.trainer_plugin.SparsityPlugin`, then write the paper's summary (method,
sparsity, FID, params, train/test FLOPs normalised to dense) plus the measured training-step
speed-up of the sparse kernels over the dense model.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion.config import ExperimentConfig
from ..diffusion.trainer import Trainer
from ..metrics.counting import count_params
from ..metrics.sample_fid import has_domain_fid
from ..models import build_model, example_inputs
from ..s2s.config import SparsityConfig
from ..s2s.flops import densities_of, flops_report
from ..s2s.trainer_plugin import SparsityPlugin

__all__ = ["run_sparse_train", "summary_row", "summary_table", "measure_step_speedup", "fid_of_samples"]

COLUMNS = ("method", "sparsity", "FID", "params", "params (rel.)", "train FLOPs", "test FLOPs", "images/s",
           "step speed-up")


def _example_inputs(model_spec: dict[str, Any], batch: int, device: str | torch.device = "cpu",
                    seq_len: int | None = None) -> tuple:
    inputs = example_inputs(model_spec, device=device, seq_len=seq_len)
    g = torch.Generator().manual_seed(0)
    out = []
    for t in inputs:
        shape = (batch, *t.shape[1:])
        if t.is_floating_point():
            out.append(torch.randn(shape, generator=g).to(device))
        else:
            out.append(torch.randint(0, 10, shape, generator=g).to(device))
    return tuple(out)


def _step_seconds(model: nn.Module, inputs: tuple, rounds: int = 5) -> float:
    """Minimum wall time of forward + backward (what a training step costs besides the optimizer)."""
    model.train()
    best = float("inf")
    for i in range(rounds + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        out.float().pow(2).mean().backward()
        if i:  # the first call resolves the backends
            best = min(best, time.perf_counter() - start)
    return best


def measure_step_speedup(sparse_model: nn.Module, dense_model: nn.Module, inputs: tuple,
                         rounds: int = 5, interleaved: int = 5) -> dict[str, float]:
    """Dense over sparse training-step time on the same inputs: ``interleaved`` alternating rounds,
    each the minimum of ``rounds`` steps; ``speedup`` is min / min, ``speedup_paired_median`` the
    median of each round's own ratio (how far one machine hiccup moves the first)."""
    sparse_model, dense_model = copy.deepcopy(sparse_model), copy.deepcopy(dense_model)
    for module in sparse_model.modules():
        # A run that ends one step before a RigL update leaves every layer asking for the dense weight
        # gradient of the next backward (a dense matmul per layer): measured so, it read 1.01x, not 1.7x.
        if getattr(module, "dense_weight_grad", False):
            module.dense_weight_grad = False
    dense, sparse = [], []
    for _ in range(interleaved):  # interleave so a burst of load on a shared machine hits both alike
        dense.append(_step_seconds(dense_model, inputs, rounds))
        sparse.append(_step_seconds(sparse_model, inputs, rounds))
    dense_s, sparse_s = min(dense), min(sparse)
    return {"dense_step_s": dense_s, "sparse_step_s": sparse_s, "speedup": dense_s / sparse_s,
            "speedup_paired_median": statistics.median(d / s for d, s in zip(dense, sparse))}


def summary_row(trainer: Trainer, plugin: SparsityPlugin, fid: float | None, timing: dict[str, float] | None
                ) -> dict[str, Any]:
    """The paper's table row for this run (Tables 1-2: FLOPs normalised to dense)."""
    sp, cfg = plugin.sparsifier, trainer.config
    with torch.device("meta"):
        dense = build_model(cfg.model)
        inputs = _example_inputs(cfg.model, 1, "meta", cfg.data.seq_len)
    report = flops_report(dense, inputs, densities_of(sp.masks()))
    dense_params = count_params(dense)
    params = dense_params - (sp.total - sp.kept)
    return {
        "method": sp.method, "sparsity": sp.config.target_sparsity, "FID": fid,
        "params": params, "params (rel.)": params / dense_params,
        "train FLOPs": report.train_ratio(sp.method, sp.config.update_every),
        "test FLOPs": report.test_ratio,
        "images/s": trainer.images_per_s(),
        "step speed-up": None if timing is None else timing["speedup"],
        "dense params": dense_params, "dense forward FLOPs": report.dense_forward,
        "sparse forward FLOPs": report.sparse_forward, "kept weights": sp.kept, "sparsified weights": sp.total,
        "mask updates": sp.updates, "weights regrown": sp.regrown, "frozen block layers": sorted(sp.frozen),
        **({} if timing is None else timing),
        "layers": [vars(layer) for layer in report.layers],
    }


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key == "params":
        return f"{value / 1e6:.3f}M"
    if key == "step speed-up":
        return f"{value:.2f}x"
    if key == "images/s":
        return f"{value:.1f}"
    if key == "sparsity":
        return f"{value:g}"
    if key == "FID":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(c, row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def summary_notes(rows: list[dict[str, Any]], steps: int) -> str:
    """What the table's columns mean, and a warning for a run whose masks never changed."""
    notes = ["`params (rel.)`, `train FLOPs` and `test FLOPs` are relative to the dense model (1.0 = dense), "
             "as in the papers' Tables 1-2.",
             "`images/s` is this run's own training throughput: every `Trainer.train_step` of this process "
             "(data, forward, backward, clipping, optimizer, mask re-application, EMA, mask updates) but the "
             "first, which measures each layer's backend once, without sampling and checkpoints.",
             "`step speed-up` is measured after training on one batch: forward + backward of this run's sparse "
             "model against a freshly built dense model, 5 alternating rounds of 5 calls each, minimum over "
             "all (the JSON's `speedup_paired_median` is the median of the rounds' own ratios); it leaves out "
             "the optimizer, EMA and data, which the dense and sparse runs pay alike "
             "(`pytest bench/test_train_iteration.py --benchmark` times whole iterations, dense and sparse "
             "interleaved)."]
    for row in rows:
        if row.get("method") != "static" and row.get("mask updates") == 0:
            notes.append(f"{row['method']}: the masks were never updated in this run's {steps} steps "
                         "(`sparsity.update_every` is larger than the run, or the updates end before it): "
                         "it trained a static mask.")
        elif row.get("method") != "static" and row.get("weights regrown") == 0:
            notes.append(f"{row['method']}: {row['mask updates']} mask updates ran, but none moved a weight: "
                         "every layer keeps too few units (blocks) for `sparsity.prune_fraction` to move one, "
                         "so it trained a static mask.")
        frozen = row.get("frozen block layers") or []
        if frozen and row.get("method") != "static":
            notes.append(f"{row['method']}: {len(frozen)} block layers keep fewer than 1 / prune_fraction blocks "
                         f"and never changed: {', '.join(frozen)}.")
    return "\n".join(f"- {n}" for n in notes)


def fid_of_samples(trainer: Trainer, ema_model: nn.Module | None = None) -> float | None:
    """The domain FID of the run's EMA samples where the dataset has one (:func:`samples_fid`); ``None``
    for datasets whose FID needs Inception weights and a reference folder ('ebsparse fid').
    ``ema_model``: sample it instead of the trainer's EMA weights (a sharded run's joined checkpoint)."""
    from ..diffusion.trainer import sample_images
    from ..metrics.sample_fid import samples_fid

    if not has_domain_fid(trainer.config.data.type):
        return None
    n, seed = trainer.config.sampling.num_samples, trainer.config.training.seed
    if ema_model is None:
        samples = trainer.sample(n, seed=seed)
    else:
        samples = sample_images(ema_model, trainer.config, n, seed=seed, device=trainer.device)
    return samples_fid(samples, trainer.config.data, trainer.dataset)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def run_sparse_train(config: ExperimentConfig, run_dir: str | Path, *, resume: bool = False, device: str = "cpu",
                     progress: bool = True, measure: bool = True, allow_config_change: bool = False) -> dict[str, Any]:
    """Train ``config`` with its ``sparsity:`` section, then write ``sparsity_summary.{md,json}``
    (the table and notes on its columns). ``progress`` also announces the evaluation after training."""
    section = config.algorithms.get("sparsity")
    if section is None:
        raise ValueError("config: run_sparse_train needs a 'sparsity:' section")
    plugin = SparsityPlugin(SparsityConfig.from_dict(section))
    trainer = Trainer(config, run_dir, device, plugins=[plugin])
    summary = trainer.fit(resume=resume, progress=progress, allow_config_change=allow_config_change)
    sparse_model, ema_model = trainer.model, None
    if trainer.sharded is not None:  # rank 0 evaluates the checkpoint it joined from the shards
        if not trainer.sharded.is_main:
            return {**summary, "row": None, "table": "", "notes": ""}
        from .checkpoints import model_from_checkpoint

        ema_model = model_from_checkpoint(run_dir)[0].to(trainer.device)
        sparse_model = model_from_checkpoint(run_dir, use_ema=False)[0].to(trainer.device).train()
    if has_domain_fid(config.data.type):
        _say(progress, f"evaluating: domain FID of {config.sampling.num_samples} samples "
                       f"({config.sampling.sampler}, {config.sampling.timesteps} steps) ...")
    fid = fid_of_samples(trainer, ema_model)
    timing = None
    if measure:
        _say(progress, "measuring the training-step speed-up of the sparse model over the dense one ...")
        inputs = _example_inputs(config.model, config.training.batch_size, trainer.device, config.data.seq_len)
        timing = measure_step_speedup(sparse_model, build_model(config.model).to(trainer.device), inputs)
    row = summary_row(trainer, plugin, fid, timing)
    run_dir = Path(run_dir)
    (run_dir / "sparsity_summary.json").write_text(json.dumps(row, indent=2) + "\n")
    table = summary_table([row])
    notes = summary_notes([row], trainer.step)
    (run_dir / "sparsity_summary.md").write_text(table + "\n\n" + notes + "\n")
    return {**summary, "row": row, "table": table, "notes": notes}
