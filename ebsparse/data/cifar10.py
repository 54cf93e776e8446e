"""CIFAR-10 from the official python batch files (``cifar-10-python.tar.gz`` extracted) on local disk.

The batch files are Python pickles. They are read with a restricted unpickler that accepts only the
numpy array reconstruction they need, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["CIFAR10Dataset", "load_cifar10_batches", "TRAIN_FILES", "TEST_FILES"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which a CIFAR batch never needs")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"CIFAR-10 batch {str(path)!r} is not a valid python batch file: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR-10 batch {str(path)!r}: expected a dict, got {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"CIFAR-10 batch {str(path)!r}: expected keys b'data' and b'labels', got {sorted(map(str, d))}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"CIFAR-10 batch {str(path)!r}: expected uint8 data of shape (N, 3072) and N labels, "
            f"got data {data.dtype} {data.shape} and labels {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_batches(root: str | os.PathLike, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 labels from ``root/data_batch_1..5`` (or ``test_batch``)."""
    root = Path(root)
    names = TRAIN_FILES if train else TEST_FILES
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 root {str(root)!r} is not a directory; expected the extracted 'cifar-10-batches-py' folder "
            f"holding {', '.join(names)} (from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)"
        )
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 root {str(root)!r} lacks {missing}; expected all of {list(names)}")
    parts = [_read_batch(root / n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images, labels


class CIFAR10Dataset(Dataset):
    """Items are (image (3, 32, 32) float32 in [-1, 1], label). Kept as uint8 in memory (150 MB)."""

    def __init__(self, root: str | os.PathLike, train: bool = True):
        self.images_u8, self.labels = load_cifar10_batches(root, train)

    def __len__(self) -> int:
        return self.images_u8.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images_u8[i].float() / 127.5 - 1.0, int(self.labels[i])
