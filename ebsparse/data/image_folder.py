"""Any folder of images (CelebA, LSUN exports, generated samples), read lazily with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ImageFolderDataset", "IMAGE_EXTENSIONS", "list_images", "load_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

#: ``center``: the largest centred square. ``celeba``: the DDIM code base's face box on aligned
#: 178x218 CelebA images (top 57, left 25, 128x128), which the CelebA-64 FIDs assume.
CROPS = ("center", "celeba")


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive, sorted). Raises if ``root`` is missing or holds none."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist; expected a directory of {IMAGE_EXTENSIONS} files")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"image folder {str(root)!r} contains no images with extensions {IMAGE_EXTENSIONS}")
    return files


def load_image(path: Path, image_size: int, channels: int, crop: str = "center") -> torch.Tensor:
    """Crop to a square (see :data:`CROPS`), resize (bilinear, as torchvision's default) and scale to
    [-1, 1]: (channels, S, S) float32."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            w, h = img.size
            if crop == "celeba":
                if (w, h) != (178, 218):
                    raise ValueError(f"crop='celeba' expects aligned 178x218 CelebA images, got {w}x{h}")
                img, s = img.crop((25, 57, 153, 185)), 128
            else:
                s = min(w, h)
                img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if s != image_size:
                img = img.resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"could not read image {str(path)!r}: {e}") from e
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


class ImageFolderDataset(Dataset):
    """Items are (image (channels, S, S) in [-1, 1], 0); unreadable files raise naming the file."""

    def __init__(self, root: str | os.PathLike, image_size: int, channels: int = 3, crop: str = "center"):
        if channels not in (1, 3):
            raise ValueError(f"image_folder: channels must be 1 or 3, got {channels!r}")
        if crop not in CROPS:
            raise ValueError(f"image_folder: crop={crop!r}; expected one of {CROPS}")
        self.crop = crop
        self.root = Path(root)
        self.files = list_images(root)
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.files[i], self.image_size, self.channels, self.crop), 0
