"""``ebsparse train-autoencoder CONFIG``: train the frozen first stage of latent diffusion (a VQ- or
KL-regularised autoencoder) on an image dataset; ``ebsparse train`` with ``model.type: ldm`` and
``model.autoencoder: <this folder>`` then trains a U-Net on its latents."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train-autoencoder"
HELP = "train the autoencoder of latent diffusion (model.type: ldm) from a YAML config"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="autoencoder YAML, e.g. configs/autoencoder/digits_vq.yaml")
    p.add_argument("--out", default=None, help="output folder (default: runs/<config name>)")
    p.add_argument("--force", action="store_true", help="replace an autoencoder already in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set training.steps=100 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def run(args: argparse.Namespace) -> int:
    from ..diffusion.autoencoder_training import load_autoencoder_config, train_autoencoder

    exp = load_autoencoder_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    summary = train_autoencoder(exp, out, device=args.device, progress=not args.no_progress, force=args.force)
    final = summary["final"]
    codes = f"; {summary['codes_used']} of {exp.autoencoder.n_embed} codes used" if "codes_used" in summary else ""
    print(f"trained {summary['steps']} steps in {summary['train_seconds']:.1f}s: reconstruction loss "
          f"{final.get('rec_loss', float('nan')):.4f} ({exp.training.rec_loss}){codes}; latents "
          f"{'x'.join(map(str, summary['latent_shape']))}, scale_factor {summary['scale_factor']:.4f}")
    print(f"wrote {out / 'autoencoder.safetensors'} and {out / 'reconstructions.png'}")
    return 0
