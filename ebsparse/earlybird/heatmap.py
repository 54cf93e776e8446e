"""The papers' Figure 2: the pairwise mask-distance matrix as a PNG heat map, drawn with Pillow.

matplotlib is not a dependency of ebsparse, and a heat map needs only coloured cells, a colour bar
and a few labels. Dark = similar masks (distance 0), bright = different; the ticket epoch's row and
column are outlined in red.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["colorize", "save_distance_heatmap"]

# viridis at 0, .25, .5, .75, 1 (linear interpolation between these is close enough for a figure)
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colorize(values: np.ndarray, vmax: float) -> np.ndarray:
    """Map values in [0, vmax] to (..., 3) uint8 viridis-like colours."""
    x = np.clip(np.asarray(values, dtype=np.float64) / max(vmax, 1e-12), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (x - lo)[..., None]
    return (_ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac).round().astype(np.uint8)


def save_distance_heatmap(distances: torch.Tensor | np.ndarray, path: str | os.PathLike, title: str = "",
                          ticket_epoch: int | None = None, cell: int | None = None) -> Path:
    """Write the (N, N) distance matrix as a PNG; returns the path.

    Rows and columns are pseudo-epochs (0-based). ``ticket_epoch`` (if any) is outlined in red.
    """
    from PIL import Image, ImageDraw, ImageFont

    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"save_distance_heatmap: distances must be a square matrix, got shape {d.shape}")
    n = d.shape[0]
    cell = cell or max(6, min(40, 480 // max(n, 1)))
    vmax = float(d.max()) if n and d.max() > 0 else 1.0
    left, top, bar_w = 44, 28 if title else 12, 14
    w, h = left + n * cell + 20 + bar_w + 44, top + n * cell + 34
    img = Image.new("RGB", (w, h), "white")
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    if n:
        cells = np.kron(colorize(d, vmax), np.ones((cell, cell, 1), dtype=np.uint8))
        img.paste(Image.fromarray(cells), (left, top))
    if title:
        draw.text((left, 6), title, fill="black", font=font)
    step = max(1, n // 8)
    for i in range(0, n, step):  # epoch labels along both axes
        c = left + i * cell + cell // 2
        draw.text((c - 3, top + n * cell + 3), str(i), fill="black", font=font)
        draw.text((left - 22, top + i * cell + cell // 2 - 5), str(i), fill="black", font=font)
    draw.text((left + n * cell // 2 - 30, top + n * cell + 18), "pseudo-epoch", fill="black", font=font)
    if ticket_epoch is not None and 0 <= ticket_epoch < n:
        x0 = left + ticket_epoch * cell
        y0 = top + ticket_epoch * cell
        draw.rectangle([x0, top, x0 + cell - 1, top + n * cell - 1], outline=(220, 0, 0))
        draw.rectangle([left, y0, left + n * cell - 1, y0 + cell - 1], outline=(220, 0, 0))
    bx = left + n * cell + 20
    bar_h = max(n * cell, 40)
    ramp = colorize(np.linspace(vmax, 0, bar_h)[:, None].repeat(bar_w, 1), vmax)
    img.paste(Image.fromarray(ramp), (bx, top))
    draw.text((bx + bar_w + 3, top - 2), f"{vmax:.2f}", fill="black", font=font)
    draw.text((bx + bar_w + 3, top + bar_h - 10), "0", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
