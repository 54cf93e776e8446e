"""The embedded default dataset: scikit-learn's handwritten digits, upsampled.

scikit-learn ships the 1,797 8x8 UCI digits inside its wheel, so this dataset needs no download and
lets the whole pipeline (training, sampling, FID) run on a fresh machine in minutes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DigitsDataset", "load_digits_tensor"]


def load_digits_tensor(image_size: int = 16, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (N, channels, image_size, image_size) float32 in [-1, 1], and labels (N,) int64.

    Upsampling is bilinear from 8x8 (values 0..16 scaled to [0, 1]); 3 channels repeat the grey one.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"digits: image_size must be an int >= 8, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"digits: channels must be 1 or 3, got {channels!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the embedded 'digits' dataset needs scikit-learn (it ships the images): pip install scikit-learn"
        ) from e
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).repeat(1, channels, 1, 1).contiguous()
    return x, torch.from_numpy(bunch.target).long()


class DigitsDataset(Dataset):
    """Map-style dataset over :func:`load_digits_tensor`; items are (image (C, S, S) in [-1, 1], label)."""

    def __init__(self, image_size: int = 16, channels: int = 1):
        self.images, self.labels = load_digits_tensor(image_size, channels)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
