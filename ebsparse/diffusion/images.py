"""Writing samples: tensors in [-1, 1] → PNG grids and numbered PNG files.

Grids of small images (the digits are 16 px) are enlarged nearest-neighbour so that each sample is
at least :data:`MIN_GRID_CELL` pixels wide and the PNG can be looked at without zooming; numbered
PNG files keep the model's resolution (they feed FID).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["to_uint8", "make_grid", "save_grid", "save_images", "MIN_GRID_CELL"]

#: Smallest width (px) of one sample in a saved grid; smaller images are repeated up to it.
MIN_GRID_CELL = 64


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] → (B, H, W, C) uint8 (clipped, rounded as torchvision does)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    y = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).numpy()


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2, min_cell: int = 0) -> np.ndarray:
    """Tile a batch into one (H', W', C) uint8 image, ``nrow`` images per row (default: square).

    ``min_cell``: enlarge each image by a whole factor (nearest-neighbour) until it is at least this
    many pixels wide; 0 keeps the size."""
    imgs = to_uint8(x)
    factor = max(1, math.ceil(min_cell / imgs.shape[2])) if min_cell > 0 else 1
    if factor > 1:
        imgs = imgs.repeat(factor, axis=1).repeat(factor, axis=2)
    b, h, w, c = imgs.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    rows = int(math.ceil(b / nrow))
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = imgs[i]
    return grid


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _with_caption(grid: np.ndarray, caption: str) -> np.ndarray:
    """``grid`` under a black strip holding ``caption`` in white (PIL's built-in bitmap font)."""
    from PIL import Image, ImageDraw

    strip_h = 16
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + strip_h))
    canvas.paste(_pil(grid).convert("RGB"), (0, strip_h))
    ImageDraw.Draw(canvas).text((3, 2), caption, fill=(255, 255, 255))
    return np.asarray(canvas)


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, caption: str | None = None,
              min_cell: int = MIN_GRID_CELL) -> Path:
    """Write ``x`` as one PNG grid; images narrower than ``min_cell`` px are enlarged
    nearest-neighbour, and ``caption`` (e.g. method, step, sampler) is written above the grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(x, nrow, min_cell=min_cell)
    if caption:
        grid = _with_caption(grid, caption)
    _pil(grid).save(path)
    return path


def save_images(x: torch.Tensor, folder: str | os.PathLike, start: int = 0) -> list[Path]:
    """One PNG per image, named ``000000.png`` upward from ``start``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, arr in enumerate(to_uint8(x)):
        p = folder / f"{start + i:06d}.png"
        _pil(arr).save(p)
        out.append(p)
    return out
