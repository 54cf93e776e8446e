"""The ``ebsparse`` command. Subcommands live in :data:`COMMANDS`; adding one means writing a
``configure(parser)`` and a ``run(args) -> int`` and registering them with :func:`register`.

Heavy imports (torch, the models) happen inside the ``run`` functions so that ``ebsparse --help``
stays instant.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["Command", "COMMANDS", "register", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Add a subcommand; registering a name twice is a programming error."""
    if name in COMMANDS:
        raise ValueError(f"ebsparse subcommand {name!r} is already registered")
    COMMANDS[name] = Command(name, help, configure, run)


# --- train ------------------------------------------------------------------------------------
def _configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, e.g. configs/digits.yaml")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from <run-dir>/checkpoint.safetensors")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set training.steps=100 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def _run_train(args: argparse.Namespace) -> int:
    from .diffusion.config import load_config
    from .diffusion.trainer import train

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    if "sparsity" in cfg.algorithms:  # sparse-to-sparse training (Static/RigL/MagRan-DM)
        from .s2s.command import run as run_sparse

        return run_sparse(cfg, run_dir, args)
    summary = train(cfg, run_dir, resume=args.resume, device=args.device, progress=not args.no_progress)
    print(f"trained to step {summary['step']} in {summary['elapsed_s']:.1f}s; checkpoint: {run_dir / 'checkpoint.safetensors'}")
    return 0


# --- sample -----------------------------------------------------------------------------------
def _configure_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory or checkpoint.safetensors written by 'ebsparse train'")
    p.add_argument("--num", type=int, default=None, help="number of images (default: sampling.num_samples)")
    p.add_argument("--out", default=None, help="folder for one PNG per image (default: <run>/samples/eval)")
    p.add_argument("--grid", default=None, help="also write a grid PNG here")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None)
    p.add_argument("--timesteps", type=int, default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--skip-type", choices=("uniform", "quad"), default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="cpu")


def _run_sample(args: argparse.Namespace) -> int:
    import dataclasses

    from .diffusion.images import save_grid, save_images
    from .diffusion.trainer import sample_images
    from .s2s.command import model_from_checkpoint  # any run; sparse ones keep their masks

    model, cfg, meta = model_from_checkpoint(args.checkpoint, use_ema=not args.no_ema)
    changes = {k: v for k, v in {"sampler": args.sampler, "timesteps": args.timesteps, "eta": args.eta,
                                 "skip_type": args.skip_type}.items() if v is not None}
    cfg.sampling = dataclasses.replace(cfg.sampling, **changes)
    n = args.num or cfg.sampling.num_samples
    x = sample_images(model.to(args.device), cfg, n, seed=args.seed, device=args.device, batch_size=args.batch_size)
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    out = Path(args.out) if args.out else run_dir / "samples" / "eval"
    save_images(x, out)
    print(f"wrote {n} images to {out} (step {meta['step']}, {cfg.sampling.sampler}, {cfg.sampling.timesteps} steps)")
    if args.grid:
        save_grid(x[:64], args.grid)
        print(f"wrote grid {args.grid}")
    return 0


# --- fid --------------------------------------------------------------------------------------
def _configure_fid(p: argparse.ArgumentParser) -> None:
    p.add_argument("generated", help="folder of generated images")
    p.add_argument("reference", nargs="?", default=None,
                   help="folder of reference images (Inception FID), or 'digits' for the embedded dataset")
    p.add_argument("--domain", choices=("digits",), default=None,
                   help="fast domain FID with a small classifier trained on the embedded digits")
    p.add_argument("--inception-weights", default=None,
                   help="local FID Inception weights (torch-fidelity's .pth); see 'ebsparse fid --help'")
    p.add_argument("--device", default="cpu")


def _run_fid(args: argparse.Namespace) -> int:
    if args.domain == "digits" or args.reference == "digits":
        from .metrics.domain_fid import digits_fid_from_folder

        value = digits_fid_from_folder(args.generated)
        print(f"digits domain FID: {value:.4f}")
        return 0
    if args.reference is None:
        raise SystemExit("ebsparse fid: give a reference folder (or --domain digits)")
    from .metrics.fid import inception_fid

    value = inception_fid(args.generated, args.reference, weights_path=args.inception_weights, device=args.device)
    print(f"FID: {value:.4f}")
    return 0


# --- info -------------------------------------------------------------------------------------
def _configure_info(p: argparse.ArgumentParser) -> None:
    p.description = "Which backend can run which op on this machine, and why not where it cannot."


def _run_info(args: argparse.Namespace) -> int:
    from . import backends

    backends.report()
    return 0


register("info", "print the backends available here and why the others are not", _configure_info, _run_info)
register("train", "train a diffusion model from a YAML config", _configure_train, _run_train)
register("sample", "draw samples from a checkpoint (PNG folder and grid)", _configure_sample, _run_sample)
register("fid", "FID between two image folders (Inception, local weights) or a domain FID", _configure_fid, _run_fid)
from .pruning import command as _prune_command  # noqa: E402,F401  (registers 'prune')
from .earlybird import command as _earlybird_command  # noqa: E402,F401  (registers 'eb-train', 'demo')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebsparse", description="Sparse training of diffusion models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads (on a busy machine, 1 is often fastest)")
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors (bad config, missing file) print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, ImportError) as e:
        print(f"ebsparse {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
