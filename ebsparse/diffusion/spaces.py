"""What a diffusion model generates, and how that becomes images.

A pixel model (the DDPM U-Net, DiT) generates the image itself. A latent model generates latents that
a frozen decoder turns into images; a sketch model generates stroke sequences that are rendered. The
trainer, the samplers and everything that saves or scores samples (grids, ``ebsparse sample``, FID,
the Early-Bird diagnostics) see a model's output only through its :class:`SampleSpace`: the shape of
one sample, whether its x0 prediction lives in [-1, 1] (so a sampler may clip it), and the map to
(N, C, H, W) images in [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import ExperimentConfig

__all__ = ["SampleSpace", "sample_space"]


class SampleSpace:
    """Pixels: a sample is a (C, H, W) image in [-1, 1] already. Other spaces subclass this and
    override :meth:`to_images` (and ``clip_denoised`` when their values are not bounded)."""

    #: whether x0 predictions may be clipped to [-1, 1] while sampling (true of images only)
    clip_denoised = True

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(s) for s in shape)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard-normal starting points x_T of ``n`` samples (on the generator's device)."""
        return torch.randn((n, *self.shape), generator=generator)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (N, *shape) -> images (N, C, H, W) in [-1, 1] (unclipped)."""
        return x


def sample_space(config: "ExperimentConfig") -> SampleSpace:
    """The space of the samples of ``config.model`` trained on ``config.data``."""
    from ..models import image_shape

    channels, size = image_shape(config.model)
    return SampleSpace((channels, size, size))
