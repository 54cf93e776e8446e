"""A fast domain FID for the embedded digits dataset.

Inception features of 16x16 grey digits say little, and Inception is slow on 2 CPU cores. As the
sketch-diffusion literature does with a domain Inception, the features here come from a small CNN
classifier trained on the digits themselves (penultimate 64-d layer). It trains deterministically in
seconds the first time and is cached as safetensors under ``$EBSPARSE_CACHE`` (default
``~/.cache/ebsparse``), keyed by image size, channels and recipe version.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .feature_cache import cache_dir, cached_network
from .frechet import feature_stats, frechet_distance

__all__ = ["DigitsClassifier", "digits_classifier", "digits_features", "digits_fid", "digits_fid_from_folder"]

RECIPE_VERSION = 1


class DigitsClassifier(nn.Module):
    """conv(32) → pool → conv(64) → pool → linear(64) = features → linear(10). Input (B, C, S, S) in [-1, 1]."""

    def __init__(self, channels: int = 1, image_size: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, 64)
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _cache_path(image_size: int, channels: int) -> Path:
    return cache_dir() / f"digits_classifier_v{RECIPE_VERSION}_{image_size}px_{channels}ch.safetensors"


def _train_classifier(image_size: int, channels: int, epochs: int = 8, seed: int = 0) -> DigitsClassifier:
    from ..data.digits import load_digits_tensor

    x, y = load_digits_tensor(image_size, channels)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsClassifier(channels, image_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            idx = perm[i:i + 64]
            xb = x[idx]
            # small random shifts make the features robust to the jitter of generated digits
            shift = torch.randint(-1, 2, (2,), generator=g)
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def digits_classifier(image_size: int = 16, channels: int = 1, cache: bool = True) -> DigitsClassifier:
    """The feature network, loaded from the cache or trained (about 10 s on 2 cores) and cached
    (:func:`~.feature_cache.cached_network`: a cached file that does not verify is trained again)."""
    return cached_network(_cache_path(image_size, channels), DigitsClassifier(channels, image_size),
                          lambda: _train_classifier(image_size, channels),
                          {"kind": "digits_classifier", "recipe_version": RECIPE_VERSION}, "digits classifier", cache)


@torch.no_grad()
def digits_features(images: torch.Tensor, model: DigitsClassifier | None = None) -> np.ndarray:
    """(N, C, S, S) images in [-1, 1] → (N, 64) features."""
    if images.ndim != 4:
        raise ValueError(f"digits_features: expected (N, C, S, S) images, got shape {tuple(images.shape)}")
    model = model or digits_classifier(images.shape[-1], images.shape[1])
    return torch.cat([model.features(images[i:i + 512].float()) for i in range(0, images.shape[0], 512)]).numpy()


def digits_fid(generated: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Domain FID of ``generated`` (N, C, S, S) in [-1, 1] against ``reference`` (default: all 1,797 digits)."""
    from ..data.digits import load_digits_tensor

    if reference is None:
        reference, _ = load_digits_tensor(generated.shape[-1], generated.shape[1])
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"digits_fid: generated {tuple(generated.shape[1:])} vs reference {tuple(reference.shape[1:])}")
    model = digits_classifier(generated.shape[-1], generated.shape[1])
    return frechet_distance(*feature_stats(digits_features(generated, model)),
                            *feature_stats(digits_features(reference, model)))


def digits_fid_from_folder(folder: str | os.PathLike, image_size: int | None = None, channels: int = 1) -> float:
    """Domain FID of the PNGs in ``folder`` (as written by ``ebsparse sample``) against the digits,
    at ``image_size`` (default: the size of the first image, so 32x32 decoded latent-diffusion samples
    are scored as the trainer scores them, not resized)."""
    from ..data.image_folder import ImageFolderDataset, list_images

    if image_size is None:
        from PIL import Image

        with Image.open(list_images(folder)[0]) as first:
            image_size = min(first.size)

    ds = ImageFolderDataset(folder, image_size, channels)
    return digits_fid(torch.stack([ds[i][0] for i in range(len(ds))]))
