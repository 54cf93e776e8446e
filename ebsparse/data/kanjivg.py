"""KanjiVG (kanjivg.tagaini.net): the stroke-order SVGs of the kanji and kana, as ChiroDiff sketches.

The ``kanjivg`` wheel (a pinned dependency) installs one SVG per character into a top-level
``kanji/`` folder: each stroke is one ``<path>`` in drawing order, its ``d`` attribute a few cubic
Béziers in a 109 x 109 box. Only the standard forms are read (``04e00.svg``; the variants such as
``04e14-Kaisho.svg`` are skipped). The ChiroDiff paper trains on the sketch-rnn conversion of
KanjiVG; this reads the same source files directly, so nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import numpy as np

from .strokes import StrokeSequences, min_seq_len
from .svg_path import SVGPathError, parse_svg_path

__all__ = ["kanjivg_dir", "list_kanjivg", "load_kanji_strokes", "KanjiVGDataset"]

_STANDARD = re.compile(r"^[0-9a-f]{5}\.svg$")
_SVG = "{http://www.w3.org/2000/svg}"


def kanjivg_dir() -> Path:
    """The folder of SVGs the ``kanjivg`` wheel installed; ``ModuleNotFoundError`` when it is absent."""
    try:
        dist = metadata.distribution("kanjivg")
    except metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError("data.type='kanjivg' needs the kanjivg wheel, which ships the SVGs: "
                                  "pip install kanjivg==20260714 (or set data.root to a folder of KanjiVG SVGs)") from e
    files = [f for f in (dist.files or ()) if f.parts[:1] == ("kanji",) and f.suffix == ".svg"]
    if not files:
        raise FileNotFoundError("the installed kanjivg wheel lists no kanji/*.svg files; reinstall it")
    return Path(dist.locate_file(files[0])).parent


def list_kanjivg(root: str | os.PathLike | None = None) -> list[Path]:
    """The standard-form SVG files (``hhhhh.svg``) under ``root`` (default :func:`kanjivg_dir`), in
    code-point order."""
    folder = Path(root) if root is not None else kanjivg_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"data.root {str(folder)!r} is not a directory of KanjiVG SVGs (hhhhh.svg)")
    files = sorted(p for p in folder.iterdir() if _STANDARD.match(p.name))
    if not files:
        raise FileNotFoundError(f"data.root {str(folder)!r} holds no KanjiVG SVGs (files named like 04e00.svg)")
    return files


def _path_data(path: Path) -> list[str]:
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"KanjiVG file {str(path)!r} is not valid XML: {e}") from e
    return [el.get("d", "") for el in tree.getroot().iter(f"{_SVG}path")]


def load_kanji_strokes(path: str | os.PathLike, curve_points: int = 8) -> list[np.ndarray]:
    """The strokes of one KanjiVG file in drawing order, each a polyline (n, 2) in the 109 x 109 box
    (y down); a path with several subpaths gives one stroke per subpath."""
    path = Path(path)
    strokes = []
    for d in _path_data(path):
        try:
            strokes.extend(p for p in parse_svg_path(d, curve_points) if len(p))
        except SVGPathError as e:
            raise ValueError(f"KanjiVG file {str(path)!r}: {e}") from e
    if not strokes:
        raise ValueError(f"KanjiVG file {str(path)!r} holds no stroke paths")
    return strokes


class KanjiVGDataset(StrokeSequences):
    """KanjiVG characters as (seq_len, 3) sequences (:mod:`ebsparse.data.strokes`); labels are the
    code points. ``max_strokes`` drops characters with more strokes (a kanji cut short is another
    character); ``limit`` keeps that many, spread evenly over the code points (so a subset is not
    only the kana, which come first)."""

    def __init__(self, seq_len: int, max_strokes: int | None = None, limit: int | None = None,
                 root: str | os.PathLike | None = None):
        files = list_kanjivg(root)
        cap = (seq_len + 1) // 2  # min_seq_len(cap) <= seq_len
        cap = min(cap, max_strokes) if max_strokes is not None else cap
        counts = [len(_path_data(f)) for f in files]
        keep = [f for f, n in zip(files, counts) if 0 < n <= cap]
        if limit is not None and limit < len(keep):
            keep = [keep[int(i)] for i in np.linspace(0, len(keep) - 1, limit).round()]
        sketches = [load_kanji_strokes(f) for f in keep]
        # a path with several subpaths can exceed the cap after parsing
        pairs = [(s, int(f.stem, 16)) for s, f in zip(sketches, keep) if min_seq_len(len(s)) <= seq_len]
        super().__init__([s for s, _ in pairs], [c for _, c in pairs], seq_len,
                         source=f"KanjiVG ({str(root) if root is not None else 'kanjivg wheel'})")
