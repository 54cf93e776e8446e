"""Datasets: the embedded digits default, image folders and CIFAR-10 python batches; sketches
from KanjiVG and QuickDraw for ChiroDiff.

``build_dataset(DataConfig(...))`` is how YAML configs become datasets; every image dataset yields
(image (C, S, S) float32 in [-1, 1], label), every stroke dataset (:data:`STROKE_TYPES`)
(sequence (seq_len, 3) float32, label) (:mod:`ebsparse.data.strokes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from torch.utils.data import Dataset

from .._config import config_from_dict

from .cifar10 import CIFAR10Dataset, load_cifar10_batches
from .digits import DigitsDataset, load_digits_tensor
from .image_folder import ImageFolderDataset, list_images
from .kanjivg import KanjiVGDataset
from .quickdraw import QuickDrawDataset

__all__ = [
    "DataConfig", "build_dataset", "DATASET_TYPES", "DigitsDataset", "ImageFolderDataset", "CIFAR10Dataset",
    "load_digits_tensor", "load_cifar10_batches", "list_images", "STROKE_TYPES", "KanjiVGDataset",
    "QuickDrawDataset",
]

DATASET_TYPES = ("digits", "image_folder", "cifar10", "kanjivg", "quickdraw")
#: datasets of sketches: (seq_len, 3) pen-move sequences, rendered at ``image_size`` for grids and FID
STROKE_TYPES = ("kanjivg", "quickdraw")
_STROKE_KEYS = ("seq_len", "max_strokes", "categories", "limit")


@dataclass
class DataConfig:
    """Rebuilds a dataset. ``root`` is required for ``image_folder`` and ``cifar10``; ``random_flip``
    is applied by the trainer (with its own generator, so that resumed runs see the same flips).

    Stroke datasets (:data:`STROKE_TYPES`): ``seq_len`` moves per sketch (default 64), ``max_strokes``
    (KanjiVG: characters with more are dropped; QuickDraw: the first ones are kept), ``limit`` (that
    many sketches; QuickDraw: per category), ``categories`` (QuickDraw: the files to read from
    ``root``); ``image_size`` is the size samples are rendered at, ``channels`` 1. ``root`` is
    optional for KanjiVG (default: the SVGs of the ``kanjivg`` wheel)."""

    type: str = "digits"
    root: str | None = None
    image_size: int = 16
    channels: int = 1
    random_flip: bool = False
    train: bool = True
    crop: str = "center"
    seq_len: int | None = None
    max_strokes: int | None = None
    categories: list[str] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.type not in DATASET_TYPES:
            raise ValueError(f"data.type={self.type!r}; expected one of {DATASET_TYPES}")
        if self.type in STROKE_TYPES:
            self._check_strokes()
        else:
            given = [k for k in _STROKE_KEYS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"data.{given[0]} applies to stroke datasets {STROKE_TYPES} only, "
                                 f"not data.type={self.type!r}")
        if self.type not in ("digits", "kanjivg") and not self.root:
            raise ValueError(f"data.root is required for data.type={self.type!r} (a path on local disk)")
        if self.type == "cifar10" and (self.image_size, self.channels) != (32, 3):
            raise ValueError(
                f"data: cifar10 images are 32x32x3; got image_size={self.image_size}, channels={self.channels}"
            )
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"data.image_size must be a positive int, got {self.image_size!r}")

    def _check_strokes(self) -> None:
        if self.seq_len is None:
            self.seq_len = 64
        for name in ("seq_len", "max_strokes", "limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"data.{name} must be a positive int, got {value!r}")
        if self.seq_len < 3:
            raise ValueError(f"data.seq_len must be >= 3 (two moves and a pen-up), got {self.seq_len}")
        if self.channels != 1:
            raise ValueError(f"data.channels must be 1 for data.type={self.type!r} (sketches render in grey), "
                             f"got {self.channels}")
        if self.random_flip:
            raise ValueError(f"data.random_flip flips images; it does not apply to data.type={self.type!r}")
        if self.type == "quickdraw" and not self.categories:
            raise ValueError("data.categories is required for data.type='quickdraw': the category files to read "
                             "from data.root, e.g. [cat, crab, mosquito]")
        if self.type == "kanjivg" and self.categories is not None:
            raise ValueError("data.categories applies to data.type='quickdraw' only (KanjiVG: data.max_strokes, "
                             "data.limit)")

    @property
    def is_strokes(self) -> bool:
        """Whether the samples are stroke sequences (seq_len, 3) rather than images."""
        return self.type in STROKE_TYPES

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
    if config.type == "kanjivg":
        return KanjiVGDataset(config.seq_len, config.max_strokes, config.limit, config.root)
    if config.type == "quickdraw":
        return QuickDrawDataset(config.root, config.categories, config.seq_len, config.max_strokes, config.limit,
                                config.train)
    return CIFAR10Dataset(config.root, config.train)
