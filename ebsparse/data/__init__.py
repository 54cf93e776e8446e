"""Datasets: the embedded digits default, image folders and CIFAR-10 python batches.

``build_dataset(DataConfig(...))`` is how YAML configs become datasets; every dataset yields
(image (C, S, S) float32 in [-1, 1], label).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from torch.utils.data import Dataset

from .._config import config_from_dict

from .cifar10 import CIFAR10Dataset, load_cifar10_batches
from .digits import DigitsDataset, load_digits_tensor
from .image_folder import ImageFolderDataset, list_images

__all__ = [
    "DataConfig", "build_dataset", "DATASET_TYPES", "DigitsDataset", "ImageFolderDataset", "CIFAR10Dataset",
    "load_digits_tensor", "load_cifar10_batches", "list_images",
]

DATASET_TYPES = ("digits", "image_folder", "cifar10")


@dataclass
class DataConfig:
    """Rebuilds a dataset. ``root`` is required for ``image_folder`` and ``cifar10``; ``random_flip``
    is applied by the trainer (with its own generator, so that resumed runs see the same flips)."""

    type: str = "digits"
    root: str | None = None
    image_size: int = 16
    channels: int = 1
    random_flip: bool = False
    train: bool = True
    crop: str = "center"

    def __post_init__(self) -> None:
        if self.type not in DATASET_TYPES:
            raise ValueError(f"data.type={self.type!r}; expected one of {DATASET_TYPES}")
        if self.type != "digits" and not self.root:
            raise ValueError(f"data.root is required for data.type={self.type!r} (a path on local disk)")
        if self.type == "cifar10" and (self.image_size, self.channels) != (32, 3):
            raise ValueError(
                f"data: cifar10 images are 32x32x3; got image_size={self.image_size}, channels={self.channels}"
            )
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"data.image_size must be a positive int, got {self.image_size!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "data") -> "DataConfig":
        """Read the ``data:`` section; wrong keys or types raise naming ``data.<key>``."""
        if isinstance(d, Mapping):
            d = dict(d)
            if d.get("type") == "cifar10":
                d.setdefault("channels", 3)
                d.setdefault("image_size", 32)
            if d.get("type") == "image_folder":
                d.setdefault("channels", 3)
        return config_from_dict(cls, d, key)


def build_dataset(config: DataConfig) -> Dataset:
    """The dataset a :class:`DataConfig` describes; missing or malformed data raise naming the path."""
    if config.type == "digits":
        return DigitsDataset(config.image_size, config.channels)
    if config.type == "image_folder":
        return ImageFolderDataset(config.root, config.image_size, config.channels, config.crop)
    return CIFAR10Dataset(config.root, config.train)
