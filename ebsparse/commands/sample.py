"""``ebsparse sample CHECKPOINT``: draw images from any training run's checkpoint or a pruned model
folder of ``ebsparse prune`` (PNG folder, grid). A sketch model (ChiroDiff) also writes its raw
samples, ``sequences.npz`` in the PNG folder (see :func:`save_sequences`)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sample"
HELP = "draw samples from a checkpoint or a pruned model folder (PNG folder and grid)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory or checkpoint.safetensors written by 'ebsparse train', or a "
                   "folder written by 'ebsparse prune'")
    p.add_argument("--num", type=int, default=None, help="number of images (default: sampling.num_samples)")
    p.add_argument("--out", default=None, help="folder for one PNG per image (default: <run>/samples/eval)")
    p.add_argument("--grid", default=None, help="also write a grid PNG here (small images enlarged, with a caption)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                   help="ddim (deterministic with --eta 0) or ddpm (ancestral: fresh noise at every step)")
    p.add_argument("--timesteps", type=int, default=None,
                   help="sampling steps, spread over the diffusion.num_timesteps of training (--skip-type); "
                        "both samplers take this many model evaluations, ddpm as ancestral steps between the "
                        "visited timesteps (the full chain is --timesteps equal to num_timesteps)")
    p.add_argument("--eta", type=float, default=None, help="ddim only: noise scale (0 = deterministic)")
    p.add_argument("--skip-type", choices=("uniform", "quad"), default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--data-out", default=None, metavar="DIR",
                   help="sketch models: also render --num sketches of the training data to DIR, drawn as the "
                        "samples are (the reference folder of 'ebsparse fid')")
    p.add_argument("--device", default="cpu")


def describe_model(cfg, meta) -> str:
    """What was sampled: method and training step (e.g. 'rigl, step 800')."""
    if meta.get("pruned"):
        method = "pruned"
    elif "sparsity" in cfg.algorithms:
        method = str(cfg.algorithms["sparsity"].get("method", "sparse"))
    else:
        method = "dense"
    step = meta.get("step")
    return method if step is None else f"{method}, step {step}"


def save_sequences(sequences, path: Path) -> None:
    """Raw sketch samples as an ``.npz`` without pickles: ``sequences`` (N, L, 3) float32 as the model
    made them (dx, dy, pen), ``positions`` (N, L + 1, 2), the pen's path from the origin, and
    ``drawn`` (N, L) bool, whether move j (positions j -> j + 1) is drawn (pen bit above 0)."""
    import numpy as np

    seq = sequences.detach().float().cpu().numpy()
    positions = np.concatenate([np.zeros((len(seq), 1, 2), np.float32), np.cumsum(seq[..., :2], axis=1)], axis=1)
    np.savez(path, sequences=seq, positions=positions, drawn=seq[..., 2] > 0)


def render_data(cfg, space, n: int):
    """``n`` sketches of the run's dataset (evenly spaced over it, all of them when it holds fewer),
    rendered by ``space`` as its samples are."""
    import torch

    from ..data import build_dataset

    data = build_dataset(cfg.data).images
    idx = torch.linspace(0, len(data) - 1, min(n, len(data))).round().long()
    return space.to_images(data[idx])


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..diffusion.images import save_grid, save_images
    from ..diffusion.samplers import describe_sampler
    from ..diffusion.spaces import StrokeSpace, sample_space
    from ..diffusion.trainer import sample_images
    from ..drivers.checkpoints import model_from_checkpoint

    model, cfg, meta = model_from_checkpoint(args.checkpoint, use_ema=not args.no_ema)
    changes = {k: v for k, v in {"sampler": args.sampler, "timesteps": args.timesteps, "eta": args.eta,
                                 "skip_type": args.skip_type}.items() if v is not None}
    cfg.sampling = dataclasses.replace(cfg.sampling, **changes)
    n = args.num or cfg.sampling.num_samples
    space = sample_space(cfg)
    raw = isinstance(space, StrokeSpace)
    x = sample_images(model.to(args.device), cfg, n, seed=args.seed, device=args.device, batch_size=args.batch_size,
                      raw=raw)
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    out = Path(args.out) if args.out else run_dir / "samples" / "eval"
    if raw:
        sequences, x = x, space.to_images(x)
        out.mkdir(parents=True, exist_ok=True)
        save_sequences(sequences, out / "sequences.npz")
        print(f"wrote {n} stroke sequences to {out / 'sequences.npz'}")
    save_images(x, out)
    print(f"wrote {n} images to {out} ({describe_model(cfg, meta)}; {describe_sampler(cfg)})")
    if args.data_out:
        if not raw:
            raise ValueError("--data-out renders the training sketches of a sketch model (model.type chirodiff); "
                             f"this model's samples are images (model.type={cfg.model.get('type')!r})")
        save_images(render_data(cfg, space, n), args.data_out)
        print(f"wrote {n} rendered training sketches to {args.data_out}")
    if args.grid:
        save_grid(x[:64], args.grid, caption=f"{describe_model(cfg, meta)}; {describe_sampler(cfg)}")
        print(f"wrote grid {args.grid}")
    return 0
