"""SVG path data (the ``d`` attribute) to polylines, for the KanjiVG stroke files.

Supported commands, absolute and relative: ``M L H V C S Q T Z`` (moveto, lineto, horizontal and
vertical lineto, cubic and smooth cubic Béziers, quadratic and smooth quadratic Béziers, closepath).
Elliptical arcs (``A``) are refused with an error: KanjiVG never uses them (its strokes are ``M``,
``C``, ``S`` and their relative forms) and a silent straight line would be a wrong answer.
Each Bézier segment becomes ``curve_points`` points evaluated at equal parameter steps; the stroke
datasets resample the polylines by arc length afterwards, so this only needs to be fine enough to
follow the curve.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["parse_svg_path", "SVGPathError"]

_TOKEN = re.compile(r"([MmLlHhVvCcSsQqTtZzAa])|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|([\s,]+)|(.)")
_ARITY = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "Z": 0}


class SVGPathError(ValueError):
    """Malformed or unsupported SVG path data."""


def _tokens(d: str) -> list[str | float]:
    out: list[str | float] = []
    for cmd, num, _space, other in _TOKEN.findall(d):
        if cmd:
            out.append(cmd)
        elif num:
            out.append(float(num))
        elif other:
            raise SVGPathError(f"SVG path data {d!r}: unexpected character {other!r}")
    return out


def _bezier(points: np.ndarray, n: int) -> np.ndarray:
    """Points at t = 1/n, 2/n, ..., 1 of the Bézier curve with control points ``points`` (k, 2)
    (the start point t = 0 is already on the polyline)."""
    t = np.arange(1, n + 1, dtype=np.float64)[:, None] / n
    if len(points) == 4:
        p0, p1, p2, p3 = points
        return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3
    p0, p1, p2 = points
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def parse_svg_path(d: str, curve_points: int = 8) -> list[np.ndarray]:
    """Polylines of the subpaths of SVG path data ``d``, each a float64 array (n, 2) of (x, y).

    A subpath starts at every moveto; a closepath appends the subpath's start point. Numbers after a
    command's arguments repeat the command (after a moveto they are linetos, as the SVG spec says).
    Raises :class:`SVGPathError` (a ``ValueError``) naming the path data for an unknown character,
    an arc, a wrong argument count or data that does not start with a moveto.
    """
    if not isinstance(curve_points, int) or curve_points < 1:
        raise ValueError(f"parse_svg_path: curve_points must be a positive int, got {curve_points!r}")
    tokens = _tokens(d)
    paths: list[list[np.ndarray]] = []
    current = np.zeros(2)
    start = np.zeros(2)
    last_control: np.ndarray | None = None  # the previous segment's second control point (S, T reflect it)
    last_kind = ""
    i = 0
    cmd = ""
    while i < len(tokens):
        token = tokens[i]
        if isinstance(token, str):
            cmd = token
            i += 1
        elif not cmd:
            raise SVGPathError(f"SVG path data {d!r} must start with a moveto (M or m), got a number")
        upper, relative = cmd.upper(), cmd.islower()
        if upper == "A":
            raise SVGPathError(f"SVG path data {d!r}: elliptical arcs (A/a) are not supported")
        if not paths and upper != "M":
            raise SVGPathError(f"SVG path data {d!r} must start with a moveto (M or m), got {cmd!r}")
        n = _ARITY[upper]
        args = tokens[i:i + n]
        if len(args) < n or any(isinstance(a, str) for a in args):
            raise SVGPathError(f"SVG path data {d!r}: command {cmd!r} needs {n} numbers, got {args!r}")
        i += n
        a = np.asarray(args, dtype=np.float64)
        base = current if relative else np.zeros(2)
        control = None
        if upper == "M":
            current = base + a
            start = current.copy()
            paths.append([current[None, :]])
            cmd = "l" if relative else "L"  # further pairs are implicit linetos
        elif upper == "Z":
            current = start.copy()
            paths[-1].append(current[None, :])
            cmd = ""  # numbers may not follow a closepath
        elif upper in ("L", "H", "V"):
            target = current.copy()
            if upper == "L":
                target = base + a
            elif upper == "H":
                target[0] = (current[0] if relative else 0.0) + a[0]
            else:
                target[1] = (current[1] if relative else 0.0) + a[0]
            current = target
            paths[-1].append(current[None, :])
        else:
            if upper in ("C", "Q"):
                ctrl = base + a[:-2].reshape(-1, 2)
            else:  # S, T: the first control point reflects the previous one of the same kind
                same_kind = last_kind == ("C" if upper == "S" else "Q")
                first = 2 * current - last_control if same_kind and last_control is not None else current.copy()
                ctrl = np.vstack([first[None, :], base + a[:-2].reshape(-1, 2)]) if upper == "S" else first[None, :]
            end = base + a[-2:]
            points = np.vstack([current[None, :], ctrl, end[None, :]])
            paths[-1].append(_bezier(points, curve_points))
            control, current = ctrl[-1], end
        last_kind = {"S": "C", "T": "Q"}.get(upper, upper)
        last_control = control
    return [np.concatenate(p, axis=0) for p in paths]
