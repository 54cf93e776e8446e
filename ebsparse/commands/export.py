"""``ebsparse export SOURCE --diffusers OUT``: a model of ``model.type: diffusers`` back as a folder that
diffusers' ``from_pretrained`` loads (dense, channel-pruned or sparse; see
:mod:`ebsparse.models.diffusers_export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "write a diffusers model (run, pruned folder or eb-train model) as a folder diffusers' from_pretrained loads"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="run directory or checkpoint.safetensors of 'ebsparse train', a folder written by "
                   "'ebsparse prune', or an eb-train model folder (runs/X/models/eb; models/ta_eb writes one "
                   "folder per region)")
    p.add_argument("--diffusers", required=True, metavar="OUT",
                   help="output folder (save_pretrained layout: config.json + diffusion_pytorch_model.safetensors)")
    p.add_argument("--no-ema", action="store_true", help="a run's raw weights instead of its EMA")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")


def load_models(source: str | Path, use_ema: bool = True) -> dict[str, object]:
    """``{subfolder: model}`` of ``source``: ``{"": model}``, or one entry per region of a TA-EB router."""
    from ..drivers.checkpoints import is_pruned_folder, model_from_checkpoint
    from ..earlybird.router import ROUTER_FILE, load_router
    from ..models import build_model
    from ..pruning.recipe import load_pruned

    source = Path(source)
    if (source / ROUTER_FILE).is_file():
        router, _ = load_router(source, build_model)
        return {f"region{i}": m for i, m in enumerate(router.models)}
    if is_pruned_folder(source):
        return {"": load_pruned(source, build_model)[0].eval()}
    if not source.exists():
        raise FileNotFoundError(f"ebsparse export: {str(source)!r} does not exist")
    return {"": model_from_checkpoint(source, use_ema=use_ema)[0]}


def run(args: argparse.Namespace) -> int:
    from ..models.diffusers_export import export_diffusers

    out = Path(args.diffusers)
    for sub, model in load_models(args.source, use_ema=not args.no_ema).items():
        path = export_diffusers(model, out / sub if sub else out, overwrite=args.force)
        print(f"wrote {path} ({type(model.inner).__name__}.from_pretrained loads it)")
    return 0
