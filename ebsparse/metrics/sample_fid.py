"""One path from sampler output to FID features: the images are scored exactly as they are saved.

A sampler returns unclipped x0; a few diverging pixels far outside [-1, 1] dominate the feature
statistics, while the PNGs a user looks at (and ``ebsparse fid`` scores) are clipped and rounded to
8 bits. :func:`as_saved` applies that same clipping and rounding in memory, so the FID of a run's
samples equals the FID of the PNGs written from them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..diffusion.images import to_uint8

__all__ = ["as_saved", "samples_fid", "has_domain_fid", "DOMAIN_FID_DATA", "SKETCH_DATA"]

#: data types with a domain FID computed here (no Inception weights needed): the digits' classifier
#: features (:mod:`.domain_fid`), and for sketches an autoencoder's (:mod:`.sketch_fid`)
SKETCH_DATA = ("kanjivg", "quickdraw")
DOMAIN_FID_DATA = ("digits", *SKETCH_DATA)


def as_saved(samples: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) sampler output → the same images as written to PNG and read back, in [-1, 1]."""
    pixels = torch.from_numpy(to_uint8(samples)).permute(0, 3, 1, 2)
    return pixels.float() / 127.5 - 1.0


def has_domain_fid(data_type: str) -> bool:
    """Whether :func:`samples_fid` scores samples of ``data_type`` (else it returns ``None``)."""
    return data_type in DOMAIN_FID_DATA


def samples_fid(samples: torch.Tensor, data: Any, dataset: Any = None) -> float | None:
    """Domain FID of sampler output (images, as :func:`~ebsparse.diffusion.trainer.sample_images`
    returns them) for the data they imitate; ``None`` for datasets whose FID needs Inception weights
    and a reference folder (``ebsparse fid``).

    ``data``: a :class:`~ebsparse.data.DataConfig` (or just its ``type`` for the digits). Sketches are
    scored against their training set rendered the same way: ``dataset`` (its ``images`` sequences),
    or the one ``data`` builds."""
    kind = data if isinstance(data, str) else data.type
    if not has_domain_fid(kind):
        return None
    if kind in SKETCH_DATA:
        if isinstance(data, str):
            raise ValueError(f"samples_fid: data={kind!r} needs the DataConfig (the reference is its training set)")
        from ..data import build_dataset
        from ..data.strokes import render_sequences
        from .sketch_fid import sketch_fid

        dataset = dataset if dataset is not None else build_dataset(data)
        reference = as_saved(render_sequences(dataset.images, data.image_size))  # rendered as samples are
        return float(sketch_fid(as_saved(samples), reference))
    from .domain_fid import digits_fid

    return float(digits_fid(as_saved(samples)))
