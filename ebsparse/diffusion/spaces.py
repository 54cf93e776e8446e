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

__all__ = ["SampleSpace", "LatentSpace", "StrokeSpace", "sample_space", "training_data"]


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


class LatentSpace(SampleSpace):
    """Latent diffusion: a sample is a scaled latent (C, h, w); its image is the frozen decoder's
    output of ``x / scale_factor``. Latents are unbounded, so x0 is never clipped while sampling.

    ``decoder``: latents (N, C, h, w) -> images (N, C', H, W); e.g. a frozen
    :class:`~ebsparse.models.autoencoder.Autoencoder`'s ``decode``."""

    clip_denoised = False

    def __init__(self, shape: tuple[int, ...], decoder: "torch.nn.Module", scale_factor: float):
        super().__init__(shape)
        self.decoder, self.scale_factor = decoder, float(scale_factor)

    @torch.no_grad()
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder.to(x.device).decode(x / self.scale_factor)


class StrokeSpace(SampleSpace):
    """Sketches: a sample is a (seq_len, 3) sequence of pen moves (dx, dy, pen), rendered to a
    (1, image_size, image_size) image (:func:`ebsparse.data.strokes.render_sequences`: positions
    are the cumulative velocities, a move is drawn where its pen bit is above 0). Velocities are not
    bounded, so x0 predictions are never clipped."""

    clip_denoised = False

    def __init__(self, seq_len: int, image_size: int, point_dim: int = 3):
        super().__init__((seq_len, point_dim))
        self.image_size = int(image_size)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        from ..data.strokes import render_sequences

        return render_sequences(x, self.image_size).to(x.device)


def sample_space(config: "ExperimentConfig") -> SampleSpace:
    """The space of the samples of ``config.model`` trained on ``config.data``."""
    from ..models import SEQUENCE_MODELS, image_shape

    if config.model.get("type") in SEQUENCE_MODELS:
        return StrokeSpace(config.data.seq_len, config.data.image_size, config.model.get("point_dim", 3))

    if config.model.get("type") == "ldm":
        from .latents import checked_latent_config

        autoencoder, unet, scale = checked_latent_config(config)
        return LatentSpace((unet.in_channels, unet.image_size, unet.image_size), autoencoder.model, scale)

    channels, size = image_shape(config.model)
    return SampleSpace((channels, size, size))


def training_data(config: "ExperimentConfig"):
    """The dataset the trainer draws x0 from, in the model's sample space: ``config.data`` itself,
    or for latent diffusion its cached latents (encoded once by the frozen autoencoder)."""
    if config.model.get("type") == "ldm":
        from .latents import latent_dataset

        return latent_dataset(config)
    from ..data import build_dataset

    return build_dataset(config.data)
