"""``ebsparse train CONFIG``: train a diffusion model; a config with a ``sparsity:`` section trains
sparse-to-sparse (:mod:`ebsparse.drivers.sparse_train`) and prints the paper's summary row.
``--init-from PRUNED_DIR`` fine-tunes a model written by ``ebsparse prune`` instead of a fresh one."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train a diffusion model from a YAML config (or fine-tune a pruned one: --init-from)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, e.g. configs/digits.yaml")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from <run-dir>/checkpoint.safetensors")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: go on although the config changed in a way that makes the run differ from "
                        "an uninterrupted one (the change is recorded in <run-dir>/config_changes.jsonl)")
    p.add_argument("--init-from", default=None, metavar="PRUNED_DIR",
                   help="fine-tune the pruned model 'ebsparse prune' wrote to PRUNED_DIR (its weights and "
                        "architecture) instead of a freshly initialised config model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set training.steps=100 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def _loss_note(cfg) -> str:
    if cfg.diffusion.loss_reduction == "sum":
        return "squared error summed over each image's pixels, averaged over the batch"
    return "squared error averaged over pixels and batch"


def _report(summary: dict, cfg, checkpoint: Path) -> None:
    if summary["start_step"] >= cfg.training.steps and summary["step"] == summary["start_step"]:
        print(f"nothing to train: the run is already at step {summary['step']} and training.steps is "
              f"{cfg.training.steps} (raise it, e.g. --set training.steps={summary['step'] + cfg.training.steps}, "
              f"to train on); checkpoint: {checkpoint}")
        return
    trained = summary["step"] - summary["start_step"]
    print(f"trained to step {summary['step']} ({trained} step{'' if trained == 1 else 's'} in {summary['session_s']:.1f}s; "
          f"{summary['elapsed_s']:.1f}s over the whole run); checkpoint: {checkpoint}")
    if "loss" in summary:
        print(f"last loss {summary['loss']:.4f} ({_loss_note(cfg)})")


def run(args: argparse.Namespace) -> int:
    from ..diffusion.config import load_config

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    checkpoint = run_dir / "checkpoint.safetensors"
    if args.allow_config_change and not args.resume:
        raise ValueError("--allow-config-change only applies to --resume")
    from ..diffusion.spaces import sample_space

    sample_space(cfg)  # a latent model's autoencoder and data are checked before any model is built
    if "sparsity" in cfg.algorithms:  # sparse-to-sparse training (Static/RigL/MagRan-DM)
        if args.init_from:
            raise ValueError("--init-from: a pruned model cannot be trained sparse-to-sparse (the config has a "
                             "'sparsity:' section)")
        from ..drivers.sparse_train import run_sparse_train

        out = run_sparse_train(cfg, run_dir, resume=args.resume, device=args.device, progress=not args.no_progress,
                               allow_config_change=args.allow_config_change)
        if out["row"] is None:  # a rank other than 0 of a sharded run: rank 0 reports
            return 0
        _report(out, cfg, checkpoint)
        print(out["table"])
        print(out["notes"])
        print(f"summary: {run_dir / 'sparsity_summary.md'}")
        return 0
    from ..diffusion.trainer import Trainer
    from ..drivers.checkpoints import pruned_plugins

    plugins = pruned_plugins(cfg, run_dir, args.init_from, resume=args.resume)
    trainer = Trainer(cfg, run_dir, args.device, plugins=plugins)
    summary = trainer.fit(resume=args.resume, progress=not args.no_progress,
                          allow_config_change=args.allow_config_change)
    if trainer.sharded is None or trainer.sharded.is_main:
        _report(summary, cfg, checkpoint)
    return 0
