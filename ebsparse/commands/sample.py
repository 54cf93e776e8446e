"""``ebsparse sample CHECKPOINT``: draw images from any training run's checkpoint (PNG folder, grid)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sample"
HELP = "draw samples from a checkpoint (PNG folder and grid)"


def configure(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..diffusion.images import save_grid, save_images
    from ..diffusion.trainer import sample_images
    from ..drivers.checkpoints import model_from_checkpoint

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
