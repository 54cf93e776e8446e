"""Diagnostics for the EB-Diff-Train report. The drift plot: the norm of each model's x0 prediction
along one DDIM trajectory started from the same noise (``figures/x0_norm.png``). The step costs:
every model's training step timed round-robin, a load-independent check of the measured speed-ups.

A model that predicts epsilon well keeps the x0 estimate near the data's norm all the way down; a
model whose errors compound (a region model off its timesteps, a ticket trained too briefly) shows
as a curve that leaves the others, before its samples are looked at.
"""

from __future__ import annotations

import functools

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..diffusion.config import ExperimentConfig
from ..diffusion.samplers import ddim_sample
from ..diffusion.schedule import NoiseSchedule
from ..diffusion.spaces import sample_space

__all__ = ["x0_norm_trajectory", "x0_norm_trajectories", "save_line_plot", "step_costs"]

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


@torch.no_grad()
def x0_norm_trajectory(model_fn: Callable, schedule: NoiseSchedule, x_T: torch.Tensor, timesteps: int,
                       skip_type: str) -> tuple[list[int], list[float]]:
    """(t of every DDIM step, mean per-image RMS of the x0 prediction at that step), eta = 0."""
    ts, norms = [], []

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model_fn(x, t)
        at = schedule.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1)
        x0 = (x - eps * (1 - at).sqrt()) / at.sqrt()
        ts.append(int(t[0]))
        norms.append(float(x0.flatten(1).pow(2).mean(1).sqrt().mean()))
        return eps

    ddim_sample(recording, schedule, x_T, timesteps=timesteps, skip_type=skip_type, eta=0.0)
    return ts, norms


def x0_norm_trajectories(models: Mapping[str, Callable], config: ExperimentConfig, n: int = 8,
                         seed: int = 0) -> dict[str, dict[str, list]]:
    """:func:`x0_norm_trajectory` of every model from the same ``n`` initial noise images."""
    x_T = sample_space(config).noise(n, generator=torch.Generator().manual_seed(seed))
    schedule = NoiseSchedule(config.diffusion)
    sc = config.sampling
    out = {}
    for name, fn in models.items():
        if getattr(fn, "class_conditional", False):  # DiT: the same labels for every model
            labels = torch.randint(0, fn.num_classes, (n,), generator=torch.Generator().manual_seed(seed))
            fn = functools.partial(_conditional, fn, labels)
        t, norm = x0_norm_trajectory(fn, schedule, x_T.clone(), sc.timesteps, sc.skip_type)
        out[name] = {"t": t, "x0_rms": norm}
    return out


def _conditional(model, labels: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return model.eps(x, t, labels)


def save_line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
                   title: str, xlabel: str, ylabel: str, reference: float | None = None,
                   size: tuple[int, int] = (680, 360)) -> Path:
    """A small PNG line plot (PIL only). The y axis is logarithmic when the values span over 10x;
    ``reference`` draws a dashed horizontal line (e.g. the data's norm)."""
    from PIL import Image, ImageDraw

    xs = [float(v) for s in series.values() for v in s[0]]
    ys = [float(v) for s in series.values() for v in s[1] if math.isfinite(v) and v > 0]
    if reference is not None:
        ys.append(reference)
    if not xs or not ys:
        raise ValueError("save_line_plot: expected at least one series with positive values")
    log = max(ys) / min(ys) > 10
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    y_lo, y_hi = f(min(ys)), f(max(ys))
    y_lo, y_hi = (y_lo - 0.05, y_hi + 0.05) if y_hi - y_lo < 1e-9 else (y_lo, y_hi)
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    w, h = size
    left, right, top, bottom = 60, 250, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_hi) / (x_lo - x_hi) * (w - left - right),  # t runs high -> low, as sampling does
                h - bottom - (f(y) - y_lo) / (y_hi - y_lo) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(5):
        yv = y_lo + (y_hi - y_lo) * k / 4
        yy = h - bottom - (yv - y_lo) / (y_hi - y_lo) * (h - top - bottom)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((4, yy - 6), f"{10 ** yv if log else yv:.3g}", fill="black")
    for k in range(5):
        xv = x_hi + (x_lo - x_hi) * k / 4
        xx = left + k / 4 * (w - left - right)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 10, h - bottom + 6), f"{xv:.0f}", fill="black")
    if reference is not None:
        _, ry = px(x_lo, reference)
        for x0 in range(left, w - right, 8):
            d.line([x0, ry, min(x0 + 4, w - right), ry], fill=(120, 120, 120))
    for i, (name, (sx, sy)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [px(float(a), float(b)) for a, b in zip(sx, sy) if math.isfinite(b) and b > 0]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        d.line([w - right + 8, top + 14 * i + 6, w - right + 24, top + 14 * i + 6], fill=color, width=2)
        d.text((w - right + 28, top + 14 * i), name, fill="black")
    d.text((left, 8), title, fill="black")
    d.text((left + (w - left - right) // 2 - 30, h - 16), xlabel, fill="black")
    d.text((w - right + 8, h - bottom - 14), ylabel + (" (log)" if log else ""), fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def step_costs(models: Mapping[str, torch.nn.Module], make_batch: Callable[[], tuple], rounds: int = 5
               ) -> dict[str, float]:
    """Seconds of one training step's forward + backward for each model, the minimum over ``rounds``
    measured round-robin (model after model, so that a burst of load on a shared machine hits all of
    them alike, unlike stage timings taken minutes apart)."""
    import time

    inputs = make_batch()
    best = {name: math.inf for name in models}
    for r in range(rounds + 1):
        for name, model in models.items():
            model.train()
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            out = model(*inputs)
            (out[0] if isinstance(out, tuple) else out).float().pow(2).mean().backward()
            if r:  # the first round warms up
                best[name] = min(best[name], time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    return best
