"""``ebsparse fid``: Inception FID between two image folders (local weights), or a domain FID."""

from __future__ import annotations

import argparse

NAME = "fid"
HELP = "FID between two image folders (Inception, local weights) or a domain FID"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("generated", help="folder of generated images")
    p.add_argument("reference", nargs="?", default=None,
                   help="folder of reference images (Inception FID), or 'digits' for the embedded dataset")
    p.add_argument("--domain", choices=("digits",), default=None,
                   help="fast domain FID with a small classifier trained on the embedded digits")
    p.add_argument("--inception-weights", default=None,
                   help="local FID Inception weights (torch-fidelity's .pth); see 'ebsparse fid --help'")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    if args.domain == "digits" or args.reference == "digits":
        from ..metrics.domain_fid import digits_fid_from_folder

        value = digits_fid_from_folder(args.generated)
        print(f"digits domain FID: {value:.4f}")
        return 0
    if args.reference is None:
        raise SystemExit("ebsparse fid: give a reference folder (or --domain digits)")
    from ..metrics.fid import inception_fid

    value = inception_fid(args.generated, args.reference, weights_path=args.inception_weights, device=args.device)
    print(f"FID: {value:.4f}")
    return 0
