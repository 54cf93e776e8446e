"""A domain FID for rendered sketches (ChiroDiff on KanjiVG or QuickDraw).

The sparse-to-sparse paper scores ChiroDiff by rendering sequences to images and computing FID with
an Inception network trained on QuickDraw (Ge et al.), which is not available here. As for the
digits (:mod:`.domain_fid`), the features come from a small network trained on the domain itself:
the encoder (a 64-d bottleneck) of a convolutional autoencoder trained to reconstruct the training
sketches, rendered exactly as samples are (:func:`ebsparse.data.strokes.render_sequences`, then the
8-bit rounding of saved PNGs). Sketches carry no class labels worth classifying (a KanjiVG character
is one sample), so a reconstruction objective is what the features can learn from. The network
trains deterministically in seconds and is cached under ``$EBSPARSE_CACHE`` keyed by a hash of the
reference images, so one dataset always gets the same feature network. Its values are comparable
between runs on the same data, not with the paper's numbers.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .feature_cache import cache_dir, cached_network
from .frechet import feature_stats, frechet_distance

__all__ = ["SketchAutoencoder", "sketch_encoder", "sketch_features", "sketch_fid", "sketch_fid_from_folders"]

RECIPE_VERSION = 1
FEATURES = 64
TRAIN_STEPS = 400


class SketchAutoencoder(nn.Module):
    """Three stride-2 convs, pooled to 4x4, to a 64-d code (the features), and a decoder back to a
    32x32 image that is resized to the input's size. Input (B, 1, S, S) in [-1, 1], S >= 8."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 4 * 4, FEATURES))
        self.decoder = nn.Sequential(
            nn.Linear(FEATURES, 32 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (32, 4, 4)),
            nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 4, 2, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _check(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] != 1 or min(images.shape[-2:]) < 8:
        raise ValueError(f"{name}: expected (N, 1, S, S) grey images with S >= 8, got shape {tuple(images.shape)}")


def _key(reference: torch.Tensor) -> str:
    digest = hashlib.sha256(reference.float().contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"sketch_autoencoder_v{RECIPE_VERSION}_{digest}"


def _train(reference: torch.Tensor, seed: int = 0) -> SketchAutoencoder:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SketchAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(TRAIN_STEPS):  # a fixed number of steps: small subsets train as long as the full set
        xb = reference[torch.randint(0, reference.shape[0], (32,), generator=g)].float()
        loss = F.mse_loss(model(xb), xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def sketch_encoder(reference: torch.Tensor, cache: bool = True) -> SketchAutoencoder:
    """The feature network of ``reference`` (the rendered training sketches): loaded from the cache or
    trained (a few seconds) and cached. A corrupted cache file is retrained with a warning."""
    _check(reference, "sketch_encoder(reference)")
    if reference.shape[0] < 2:
        raise ValueError(f"sketch_encoder: need at least 2 reference images, got {reference.shape[0]}")
    return cached_network(cache_dir() / f"{_key(reference)}.safetensors", SketchAutoencoder(), lambda: _train(reference),
                          {"kind": "sketch_autoencoder", "recipe_version": RECIPE_VERSION}, "sketch autoencoder", cache)


@torch.no_grad()
def sketch_features(images: torch.Tensor, model: SketchAutoencoder) -> np.ndarray:
    """(N, 1, S, S) images in [-1, 1] -> (N, 64) features."""
    _check(images, "sketch_features")
    return torch.cat([model.features(images[i:i + 512].float()) for i in range(0, images.shape[0], 512)]).numpy()


def sketch_fid(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Domain FID of ``generated`` against ``reference`` (both rendered sketches, (N, 1, S, S) in [-1, 1])."""
    _check(generated, "sketch_fid(generated)")
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"sketch_fid: generated {tuple(generated.shape[1:])} vs reference {tuple(reference.shape[1:])}")
    model = sketch_encoder(reference)
    return frechet_distance(*feature_stats(sketch_features(generated, model)),
                            *feature_stats(sketch_features(reference, model)))


def sketch_fid_from_folders(generated: str | os.PathLike, reference: str | os.PathLike) -> float:
    """:func:`sketch_fid` of the PNGs in ``generated`` against those in ``reference`` (read as grey
    images at the reference's size)."""
    from PIL import Image

    from ..data.image_folder import ImageFolderDataset, list_images

    with Image.open(list_images(reference)[0]) as first:
        size = first.size[0]
    load = lambda folder: torch.stack([item[0] for item in ImageFolderDataset(folder, size, 1)])  # noqa: E731
    return sketch_fid(load(generated), load(reference))
