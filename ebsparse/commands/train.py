"""``ebsparse train CONFIG``: train a diffusion model; a config with a ``sparsity:`` section trains
sparse-to-sparse (:mod:`ebsparse.drivers.sparse_train`) and prints the paper's summary row."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train a diffusion model from a YAML config"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, e.g. configs/digits.yaml")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from <run-dir>/checkpoint.safetensors")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set training.steps=100 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def run(args: argparse.Namespace) -> int:
    from ..diffusion.config import load_config

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    checkpoint = run_dir / "checkpoint.safetensors"
    if "sparsity" in cfg.algorithms:  # sparse-to-sparse training (Static/RigL/MagRan-DM)
        from ..drivers.sparse_train import run_sparse_train

        out = run_sparse_train(cfg, run_dir, resume=args.resume, device=args.device, progress=not args.no_progress)
        print(f"trained to step {out['step']} in {out['elapsed_s']:.1f}s; checkpoint: {checkpoint}")
        print(out["table"])
        print(f"summary: {run_dir / 'sparsity_summary.md'}")
        return 0
    from ..diffusion.trainer import train

    summary = train(cfg, run_dir, resume=args.resume, device=args.device, progress=not args.no_progress)
    print(f"trained to step {summary['step']} in {summary['elapsed_s']:.1f}s; checkpoint: {checkpoint}")
    return 0
