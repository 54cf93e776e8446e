"""``ebsparse demo``: EB and TA-EB on the embedded digits data (``configs/digits_eb.yaml``), about
:data:`MINUTES` minutes on 2 CPU cores; writes the distance heat maps, sample grids and the speed-up table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .eb_train import run_pipeline

__all__ = ["NAME", "HELP", "configure", "run", "DEMO_CONFIG", "MINUTES"]

#: The demo's wall-clock time on 2 CPU cores, as the help and the README state it.
MINUTES = 10
NAME = "demo"
HELP = f"run EB and TA-EB on the embedded digits data (about {MINUTES} min on 2 CPU cores)"
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_eb.yaml"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of configs/digits_eb.yaml (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(f"the demo config {DEMO_CONFIG} is missing (it ships in the repository's configs/)")
    if getattr(args, "threads", None) is None:
        # The demo's models are tiny (per-op overhead dominates) and a second OpenMP thread competes
        # with everything else on the machine (bench/NOTES.md). --threads overrides.
        torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    print(f"ebsparse demo: Early-Bird (EB) and timestep-aware Early-Bird (TA-EB) tickets on the embedded digits "
          f"data ({DEMO_CONFIG.name}), {torch.get_num_threads()} torch threads; output in {run_dir}/")
    t0 = time.perf_counter()
    run_pipeline(DEMO_CONFIG, run_dir, True, args.resume, args.overrides, None, not args.no_progress)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s (wall-clock, this process); "
          f"table: {run_dir / 'table.md'}")
    return 0
