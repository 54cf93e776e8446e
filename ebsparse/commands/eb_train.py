"""``ebsparse eb-train CONFIG [--ta-eb]``: the EB-Diff-Train driver (:mod:`ebsparse.drivers.eb_pipeline`)
on any config with (or without: the papers' defaults) an ``earlybird:`` section. Under ``torchrun``
the TA-EB region models train in parallel processes, one process group per region.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

__all__ = ["NAME", "HELP", "configure", "run", "run_pipeline"]

NAME = "eb-train"
HELP = "Early-Bird ticket training (EB-Diff-Train; --ta-eb for timestep-aware tickets)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML; its 'earlybird' section holds the ticket settings")
    p.add_argument("--ta-eb", action="store_true", help="also find one ticket per timestep region and train them (TA-EB)")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>-eb[-ta])")
    p.add_argument("--resume", action="store_true", help="continue a run with the settings saved in its "
                   "config.json (no --set to retype): finished stages are skipped, the current one resumes from "
                   "its checkpoint")
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


def _saved_settings(run_dir: Path) -> dict | None:
    path = run_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _resumed_config(saved: dict, overrides: list[str]):
    """The run's own config (its ``config.json``), with ``overrides`` applied on top."""
    from ..diffusion.config import ExperimentConfig, apply_overrides

    import copy

    raw = {k: copy.deepcopy(v) for k, v in saved.items() if k != "ta_eb"}
    apply_overrides(raw, overrides)
    try:
        return ExperimentConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--set {' --set '.join(overrides)}: {e}" if overrides else f"config.json: {e}") from e


def _check_same_settings(run_dir: Path, saved: dict, wanted: dict) -> None:
    """Refuse to resume with settings other than the run's, naming each key that differs."""
    from ..diffusion.config import changes_text, config_diff

    changes = config_diff({k: saved.get(k) for k in wanted}, wanted)
    if changes:
        listing = changes_text(changes)
        raise ValueError(f"--resume: {run_dir / 'config.json'} was written with other settings ({listing}); "
                         "finished stages would not match. Drop the --set (a resume reuses the run's settings) "
                         "or choose another --run-dir")


def run_pipeline(config_path, run_dir: Path, ta_eb: bool, resume: bool, overrides, baselines, progress: bool) -> dict:
    """Load the config, join the process group under ``torchrun``, and run (or resume) every stage.

    A resume takes the settings the run saved (``config.json``), so no ``--set`` needs retyping;
    ``overrides`` given anyway must not change them (the error names the keys that would)."""
    from ..diffusion.config import load_config
    from ..drivers.eb_pipeline import EBRun

    overrides = list(overrides)
    if baselines is not None:
        overrides.append(f"earlybird.baselines=[{', '.join(baselines)}]")
    saved = _saved_settings(run_dir) if resume else None
    cfg = _resumed_config(saved, overrides) if saved is not None else load_config(config_path, overrides)
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
    pipeline = EBRun(cfg, run_dir, ta_eb=ta_eb, progress=progress)
    if saved is not None:
        _check_same_settings(run_dir, saved, {**cfg.to_dict(), "earlybird": pipeline.eb.to_dict(), "ta_eb": ta_eb})
    return pipeline.run()


def run(args: argparse.Namespace) -> int:
    suffix = "-eb-ta" if args.ta_eb else "-eb"
    run_dir = Path(args.run_dir or Path("runs") / (Path(args.config).stem + suffix))
    out = run_pipeline(args.config, run_dir, args.ta_eb, args.resume, args.overrides, args.baselines, not args.no_progress)
    if out:
        print(f"wrote {run_dir / 'table.md'} and {run_dir / 'results.json'}")
    return 0
