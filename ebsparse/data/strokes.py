"""Sketches as ChiroDiff sees them: fixed-length sequences of pen moves, and back to strokes and pixels.

A sketch is a list of strokes, each a polyline (n, 2) in drawing order. ChiroDiff (Das et al., 2023)
treats it as samples of a continuous curve in time, so the number of points is a choice made when
the curve is sampled, not a property of the data. The reference code samples every stroke at a fixed
arc-length spacing (so sketches get different lengths) and pads and masks the batch; our trainer
takes fixed-shape samples, so :func:`strokes_to_sequence` samples the same curve at a fixed number
of points instead: ``seq_len + 1`` points spread over the strokes in proportion to their arc length
(at least two per stroke), equally spaced along each stroke. Before that, as in the reference, the
sketch is moved so that its first point is the origin and scaled so that the farthest point is at
distance 1.

Row ``j`` of a sequence (seq_len, 3) is the move from point ``j`` to point ``j + 1``: its velocity
(dx, dy) and a pen bit, +1 when the move is drawn and -1 when the pen is up (the jump from the end of
a stroke to the start of the next), the sparse-to-sparse paper's p in {-1, 1}. The model sees the
positions as the cumulative sum of the velocities, starting at the origin. (The reference marks the
last point of each stroke instead of the jump after it; the two carry the same information.)
:class:`StrokeSequences` scales the velocities by one number per dataset so that their RMS is 1,
which puts the data on the scale the noise schedule is made for; the renderer fits every sketch to
its canvas, so that scale never shows in an image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["normalize_strokes", "resample_strokes", "strokes_to_sequence", "sequence_to_strokes",
           "render_sequences", "render_strokes", "StrokeSequences", "min_seq_len"]


def _as_strokes(strokes: Sequence[np.ndarray], name: str = "strokes") -> list[np.ndarray]:
    out = []
    for i, s in enumerate(strokes):
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 1:
            raise ValueError(f"{name}[{i}]: expected an array of points (n >= 1, 2), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name}[{i}]: holds a non-finite coordinate")
        out.append(a)
    if not out:
        raise ValueError(f"{name}: a sketch needs at least one stroke, got none")
    return out


def normalize_strokes(strokes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Move the sketch so its first point is the origin and scale it so the farthest point is at
    distance 1 (a sketch that is a single point stays at the origin)."""
    strokes = _as_strokes(strokes)
    origin = strokes[0][0].copy()
    moved = [s - origin for s in strokes]
    radius = max(float(np.linalg.norm(s, axis=1).max()) for s in moved)
    return [s / radius for s in moved] if radius > 0 else moved


def min_seq_len(num_strokes: int) -> int:
    """The shortest sequence that holds ``num_strokes`` strokes (two points each, one row per move)."""
    return 2 * num_strokes - 1


def _arc_lengths(stroke: np.ndarray) -> np.ndarray:
    """Cumulative arc length at each point of a polyline (starts at 0)."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(stroke, axis=0), axis=1))])


def _allocate(lengths: np.ndarray, total: int) -> np.ndarray:
    """Points per stroke: two each, the rest in proportion to arc length (largest remainder, ties to
    the earlier stroke); strokes of length zero share the rest evenly when all are zero."""
    n = len(lengths)
    extra = total - 2 * n
    weights = lengths if lengths.sum() > 0 else np.ones(n)
    share = extra * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[:extra - counts.sum()]] += 1
    return counts + 2


def resample_strokes(strokes: Sequence[np.ndarray], num_points: int) -> list[np.ndarray]:
    """The same strokes with ``num_points`` points in all, equally spaced along each stroke's arc
    length (both ends kept); raises ``ValueError`` when ``num_points < 2 * len(strokes)``."""
    strokes = _as_strokes(strokes)
    if not isinstance(num_points, int) or num_points < 2 * len(strokes):
        raise ValueError(f"resample_strokes: num_points={num_points!r} must be an int >= 2 per stroke "
                         f"({2 * len(strokes)} for {len(strokes)} strokes)")
    arcs = [_arc_lengths(s) for s in strokes]
    counts = _allocate(np.array([a[-1] for a in arcs]), num_points)
    out = []
    for s, arc, k in zip(strokes, arcs, counts):
        at = np.linspace(0.0, arc[-1], int(k))
        if arc[-1] == 0:  # a dot: every sample is the point itself
            out.append(np.repeat(s[:1], k, axis=0))
            continue
        keep = np.concatenate([[True], np.diff(arc) > 0])  # repeated points would make arc non-increasing
        out.append(np.stack([np.interp(at, arc[keep], s[keep, d]) for d in range(2)], axis=1))
    return out


def strokes_to_sequence(strokes: Sequence[np.ndarray], seq_len: int) -> np.ndarray:
    """A sketch as ChiroDiff's (seq_len, 3) float32 sequence (module docstring): normalised,
    resampled to ``seq_len + 1`` points, then per move (dx, dy, pen) with pen +1 drawn, -1 pen-up."""
    strokes = resample_strokes(normalize_strokes(strokes), seq_len + 1)
    points = np.concatenate(strokes, axis=0)
    drawn = np.concatenate([np.r_[np.ones(len(s) - 1), -1.0] for s in strokes])[:-1]
    return np.concatenate([np.diff(points, axis=0), drawn[:, None]], axis=1).astype(np.float32)


def _positions(seq: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((1, 2)), np.cumsum(seq[:, :2].astype(np.float64), axis=0)])


def sequence_to_strokes(seq: np.ndarray | torch.Tensor, threshold: float = 0.0) -> list[np.ndarray]:
    """The strokes drawn by a (L, 3) sequence: positions are the cumulative sum of the velocities
    from the origin, and each run of moves whose pen bit is above ``threshold`` is one stroke
    (L + 1 points in all). A sequence with no drawn move gives an empty list."""
    seq = seq.detach().cpu().numpy() if isinstance(seq, torch.Tensor) else np.asarray(seq)
    if seq.ndim != 2 or seq.shape[1] < 3:
        raise ValueError(f"sequence_to_strokes: expected a sequence (L, 3), got shape {seq.shape}")
    points, drawn = _positions(seq), seq[:, 2] > threshold
    strokes, start = [], None
    for j, d in enumerate(np.r_[drawn, False]):
        if d and start is None:
            start = j
        elif not d and start is not None:
            strokes.append(points[start:j + 1])
            start = None
    return strokes


def render_strokes(strokes: Sequence[np.ndarray], size: int, line_width: float | None = None,
                   margin: float = 0.1, supersample: int = 4) -> np.ndarray:
    """Draw strokes into a (size, size) float32 image in [0, 1] (1 = ink), the sketch's bounding box
    fitted to the canvas less ``margin`` on each side, aspect ratio kept and centred. Lines are
    ``line_width`` pixels wide (default size / 32, at least 1), drawn ``supersample`` times larger
    and box-filtered down, with round ends."""
    from PIL import Image, ImageDraw

    if not isinstance(size, int) or size < 1:
        raise ValueError(f"render_strokes: size must be a positive int, got {size!r}")
    big = size * supersample
    image = Image.new("L", (big, big), 0)
    if strokes:
        pts = np.concatenate([np.asarray(s, dtype=np.float64) for s in strokes])
        lo, hi = pts.min(0), pts.max(0)
        extent = float((hi - lo).max())
        scale = big * (1 - 2 * margin) / extent if extent > 0 else 0.0
        centre = (lo + hi) / 2
        width = (line_width if line_width is not None else max(1.0, size / 32)) * supersample
        draw = ImageDraw.Draw(image)
        r = width / 2
        for s in strokes:
            xy = (np.asarray(s, dtype=np.float64) - centre) * scale + big / 2
            draw.line([tuple(p) for p in xy], fill=255, width=max(1, round(width)), joint="curve")
            for x, y in (xy[0], xy[-1]):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    if supersample > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def render_sequences(x: torch.Tensor, size: int, line_width: float | None = None) -> torch.Tensor:
    """Sequences (N, L, 3) -> images (N, 1, size, size) float32 in [-1, 1]: ink +1 on a -1
    background, each drawn by :func:`render_strokes` from :func:`sequence_to_strokes`."""
    if x.dim() != 3 or x.shape[-1] < 3:
        raise ValueError(f"render_sequences: expected sequences (N, L, 3), got {tuple(x.shape)}")
    seqs = x.detach().float().cpu().numpy()
    images = np.stack([render_strokes(sequence_to_strokes(s), size, line_width) for s in seqs]) if len(seqs) else \
        np.zeros((0, size, size), np.float32)
    return torch.from_numpy(images * 2 - 1).unsqueeze(1)


class StrokeSequences(Dataset):
    """Sketches as one tensor: ``images`` (N, seq_len, 3) float32 sequences (the trainer's name for a
    dataset's samples), ``labels`` (N,) int64, and ``velocity_scale``, the number the velocities of
    :func:`strokes_to_sequence` were divided by (their RMS over the dataset)."""

    def __init__(self, sketches: Sequence[Sequence[np.ndarray]], labels: Sequence[int], seq_len: int, source: str):
        if len(sketches) == 0:
            raise ValueError(f"{source}: no sketches to train on (check data.max_strokes, data.limit, data.categories)")
        seqs = np.stack([strokes_to_sequence(s, seq_len) for s in sketches])
        rms = float(np.sqrt(np.mean(seqs[..., :2].astype(np.float64) ** 2)))
        self.velocity_scale = rms if rms > 0 else 1.0
        seqs[..., :2] /= self.velocity_scale
        self.images = torch.from_numpy(seqs)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
