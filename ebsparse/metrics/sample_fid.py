"""One path from sampler output to FID features: the images are scored exactly as they are saved.

A sampler returns unclipped x0; a few diverging pixels far outside [-1, 1] dominate the feature
statistics, while the PNGs a user looks at (and ``ebsparse fid`` scores) are clipped and rounded to
8 bits. :func:`as_saved` applies that same clipping and rounding in memory, so the FID of a run's
samples equals the FID of the PNGs written from them.
"""

from __future__ import annotations

import torch

from ..diffusion.images import to_uint8

__all__ = ["as_saved", "samples_fid", "has_domain_fid", "DOMAIN_FID_DATA"]

#: data types with a domain FID computed here (no Inception weights needed)
DOMAIN_FID_DATA = ("digits",)


def as_saved(samples: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) sampler output → the same images as written to PNG and read back, in [-1, 1]."""
    pixels = torch.from_numpy(to_uint8(samples)).permute(0, 3, 1, 2)
    return pixels.float() / 127.5 - 1.0


def has_domain_fid(data_type: str) -> bool:
    """Whether :func:`samples_fid` scores samples of ``data_type`` (else it returns ``None``)."""
    return data_type in DOMAIN_FID_DATA


def samples_fid(samples: torch.Tensor, data_type: str) -> float | None:
    """FID of sampler output for a dataset type: the digits domain FID of the saved images; ``None``
    for datasets whose FID needs Inception weights and a reference folder (``ebsparse fid``)."""
    if not has_domain_fid(data_type):
        return None
    from .domain_fid import digits_fid

    return float(digits_fid(as_saved(samples)))
