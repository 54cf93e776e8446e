"""``ebsparse eb-train`` and ``ebsparse demo`` (front layer). Importing this module registers both.

``eb-train CONFIG [--ta-eb]``: the EB-Diff-Train pipeline of :mod:`.pipeline` on any config with
(or without: the papers' defaults) an ``earlybird:`` section. Under ``torchrun`` the TA-EB region
models train in parallel processes, one process group per region.

``demo``: EB and TA-EB on the embedded digits data (``configs/digits_eb.yaml``), about 10 minutes on
2 CPU cores; writes the distance heat maps, sample grids and the speed-up table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

__all__ = ["configure_eb_train", "run_eb_train", "configure_demo", "run_demo", "DEMO_CONFIG"]

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_eb.yaml"


def configure_eb_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML; its 'earlybird' section holds the ticket settings")
    p.add_argument("--ta-eb", action="store_true", help="also find one ticket per timestep region and train them (TA-EB)")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>-eb[-ta])")
    p.add_argument("--resume", action="store_true", help="continue a run: finished stages are skipped, "
                   "the current one resumes from its checkpoint")
    p.add_argument("--baselines", nargs="*", default=None, metavar="NAME",
                   help="override earlybird.baselines: any of dense, scratch, train_prune_finetune")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set earlybird.eta=0.05 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bars")


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    started = run_dir.is_dir() and any((run_dir / d).exists() for d in ("stages", "dense", "tickets"))
    if started and not resume:
        raise FileExistsError(f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it "
                              "or choose another --run-dir")
    if resume and not started:
        raise FileNotFoundError(f"--resume: {str(run_dir)!r} holds no run to continue; start without --resume")


def _run(config_path, run_dir: Path, ta_eb: bool, resume: bool, overrides, baselines, progress: bool) -> dict:
    from ..diffusion.config import load_config
    from .pipeline import EBRun

    overrides = list(overrides)
    if baselines is not None:
        overrides.append(f"earlybird.baselines=[{', '.join(baselines)}]")
    cfg = load_config(config_path, overrides)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import datetime

        import torch
        import torch.distributed as dist

        if not dist.is_initialized():  # the ticket search on rank 0 can take hours: long barrier timeout
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                    timeout=datetime.timedelta(days=2))
        rank = dist.get_rank()
    else:
        rank = 0
    if rank == 0:
        _check_run_dir(run_dir, resume)
    return EBRun(cfg, run_dir, ta_eb=ta_eb, progress=progress).run()


def run_eb_train(args: argparse.Namespace) -> int:
    suffix = "-eb-ta" if args.ta_eb else "-eb"
    run_dir = Path(args.run_dir or Path("runs") / (Path(args.config).stem + suffix))
    out = _run(args.config, run_dir, args.ta_eb, args.resume, args.overrides, args.baselines, not args.no_progress)
    if out:
        print(f"wrote {run_dir / 'table.md'} and {run_dir / 'results.json'}")
    return 0


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of configs/digits_eb.yaml (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bars")


def run_demo(args: argparse.Namespace) -> int:
    import torch

    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(f"the demo config {DEMO_CONFIG} is missing (it ships in the repository's configs/)")
    if getattr(args, "threads", None) is None:
        # The demo's models are tiny (per-op overhead dominates) and a second OpenMP thread competes
        # with everything else on the machine: on the shared 2-core development machine one thread
        # ran the dense steps 3-6x faster than two. --threads overrides.
        torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    print(f"ebsparse demo: Early-Bird (EB) and timestep-aware Early-Bird (TA-EB) tickets on the embedded digits "
          f"data ({DEMO_CONFIG.name}), {torch.get_num_threads()} torch threads; output in {run_dir}/")
    t0 = time.perf_counter()
    _run(DEMO_CONFIG, run_dir, True, args.resume, args.overrides, None, not args.no_progress)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s (wall-clock, this process); "
          f"table: {run_dir / 'table.md'}")
    return 0


def _register() -> None:
    from ..cli import COMMANDS, register

    if "eb-train" not in COMMANDS:
        register("eb-train", "Early-Bird ticket training (EB-Diff-Train; --ta-eb for timestep-aware tickets)",
                 configure_eb_train, run_eb_train)
    if "demo" not in COMMANDS:
        register("demo", "run EB and TA-EB on the embedded digits data (about 10 min on 2 CPU cores)",
                 configure_demo, run_demo)


_register()
