"""QuickDraw sketches from files the user provides: Google's ``.ndjson`` and sketch-rnn's ``.npz``.

``root`` is a folder with one file per category, named ``<category>.ndjson`` / ``<category>.npz``
(Google's ``full_simplified_<category>.ndjson`` and ``full_raw_<category>.ndjson`` match too).

- ``.ndjson``: one JSON object per line whose ``drawing`` is a list of strokes ``[[x...], [y...]]``
  (the raw files add a third list of times, ignored here).
- ``.npz`` (sketch-rnn): arrays ``train``, ``valid``, ``test``, each an object array of stroke-3
  sketches (n, 3) = (dx, dy, p), p = 1 on the last point of a stroke. Object arrays are pickles; they
  are read with a restricted unpickler that rebuilds numpy arrays only, so a tampered file cannot
  run code.

As in the ChiroDiff reference, a sketch keeps at most ``max_strokes`` strokes (the first ones).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .cifar10 import _ALLOWED
from .strokes import StrokeSequences, min_seq_len

__all__ = ["find_category_file", "read_ndjson", "read_sketch_rnn_npz", "QuickDrawDataset"]

SUFFIXES = (".ndjson", ".npz")


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a sketch-rnn .npz holds numpy arrays only")


def find_category_file(root: str | os.PathLike, category: str) -> Path:
    """The file of ``category`` in ``root`` (``.ndjson`` or ``.npz``); errors name the folder."""
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.root {str(folder)!r} is not a directory; expected a folder of QuickDraw "
                                f"files (<category>.ndjson or sketch-rnn <category>.npz)")
    found = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES
                   and (p.stem == category or p.stem.endswith("_" + category)))
    if not found:
        have = sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES)
        raise FileNotFoundError(f"data.root {str(folder)!r} has no file for category {category!r} "
                                f"(expected {category}.ndjson or {category}.npz); it holds {have}")
    if len(found) > 1:
        raise ValueError(f"data.root {str(folder)!r}: category {category!r} matches several files "
                         f"{[p.name for p in found]}; keep one")
    return found[0]


def read_ndjson(path: str | os.PathLike, limit: int | None = None) -> list[list[np.ndarray]]:
    """Sketches of a QuickDraw ``.ndjson`` file (the first ``limit``), each a list of (n, 2) strokes."""
    path = Path(path)
    sketches = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(sketches) >= limit:
                break
            if not line.strip():
                continue
            try:
                drawing = json.loads(line)["drawing"]
                strokes = [np.stack([np.asarray(s[0], np.float64), np.asarray(s[1], np.float64)], 1)
                           for s in drawing]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as e:
                raise ValueError(f"QuickDraw file {str(path)!r} line {lineno}: expected a JSON object whose "
                                 f"'drawing' is a list of [[x...], [y...]] strokes ({type(e).__name__}: {e})") from e
            strokes = [s for s in strokes if len(s)]
            if strokes:
                sketches.append(strokes)
    return sketches


def _read_npy(member, name: str) -> np.ndarray:
    version = np.lib.format.read_magic(member)
    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    _shape, _fortran, dtype = header(member)
    if not dtype.hasobject:
        raise ValueError(f"{name}: expected an object array of sketches, got dtype {dtype}")
    return np.asarray(_ArraysOnly(member, encoding="latin1").load(), dtype=object)


def read_sketch_rnn_npz(path: str | os.PathLike, split: str = "train",
                        limit: int | None = None) -> list[list[np.ndarray]]:
    """Sketches of split ``split`` of a sketch-rnn ``.npz`` (stroke-3), each a list of absolute (n, 2)
    strokes starting at the origin."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            if split not in names:
                raise ValueError(f"QuickDraw file {str(path)!r} has no array {split!r}; it holds {names}")
            with zf.open(f"{split}.npy") as member:
                arrays = _read_npy(member, f"QuickDraw file {str(path)!r} array {split!r}")
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"QuickDraw file {str(path)!r} is not a sketch-rnn .npz: {e}") from e
    sketches = []
    for i, a in enumerate(arrays[:limit]):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"QuickDraw file {str(path)!r} {split}[{i}]: expected stroke-3 (n, 3), got {a.shape}")
        points = np.cumsum(a[:, :2], axis=0)
        ends = np.flatnonzero(a[:, 2] > 0.5) + 1
        strokes = [s for s in np.split(points, ends) if len(s)]
        if strokes:
            sketches.append(strokes)
    return sketches


class QuickDrawDataset(StrokeSequences):
    """QuickDraw categories as (seq_len, 3) sequences (:mod:`ebsparse.data.strokes`); the label of a
    sketch is its category's index in ``categories``. ``limit``: sketches per category. ``train``:
    sketch-rnn's ``train`` split, else its ``test`` split (an ``.ndjson`` file has no splits: all of it)."""

    def __init__(self, root: str | os.PathLike, categories: Sequence[str], seq_len: int,
                 max_strokes: int | None = None, limit: int | None = None, train: bool = True):
        if not categories:
            raise ValueError("data.categories: name at least one QuickDraw category (e.g. [cat, crab, mosquito])")
        cap = (seq_len + 1) // 2
        cap = min(cap, max_strokes) if max_strokes is not None else cap
        sketches, labels = [], []
        for label, category in enumerate(categories):
            path = find_category_file(root, category)
            read = read_ndjson(path, limit) if path.suffix == ".ndjson" else \
                read_sketch_rnn_npz(path, "train" if train else "test", limit)
            for strokes in read:
                strokes = strokes[:cap]
                if min_seq_len(len(strokes)) <= seq_len:
                    sketches.append(strokes)
                    labels.append(label)
        super().__init__(sketches, labels, seq_len, source=f"QuickDraw ({root})")
