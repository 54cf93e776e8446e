"""``ebsparse s2s-table CONFIG``: the sparse-to-sparse paper's Table 1/2 for one model and dataset
(:mod:`ebsparse.drivers.s2s_table`): Dense and Static/RigL/MagRan-DM at the paper's sparsities,
trained with the config's settings, tabulated with FID, params, FLOPs and the measured speed-up."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "s2s-table"
HELP = "train Dense and Static/RigL/MagRan-DM over a sparsity grid and write the paper's table"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML; its 'sparsity:' section, if any, is every sparse run's template")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="any of static, rigl, magran (default: all three)")
    p.add_argument("--sparsities", nargs="+", type=float, default=None, metavar="S",
                   help="sparsity levels S (default: the paper's 0.1 0.25 0.5 0.75 0.9)")
    p.add_argument("--seeds", type=int, default=1, help="runs per setting, seeds 0..N-1 (the paper: 3)")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>-s2s-table); "
                   "re-running continues an unfinished grid")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value for every run, e.g. --set training.steps=500 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bars")


def run(args: argparse.Namespace) -> int:
    from ..diffusion.config import load_config
    from ..drivers.s2s_table import PAPER_SPARSITIES, run_s2s_table
    from ..s2s.config import METHODS

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / f"{Path(args.config).stem}-s2s-table")
    out = run_s2s_table(cfg, run_dir, methods=args.methods or METHODS, sparsities=args.sparsities or PAPER_SPARSITIES,
                        seeds=range(args.seeds), device=args.device, progress=not args.no_progress)
    print(out["table"])
    print(f"table: {run_dir / 'table.md'}")
    return 0
