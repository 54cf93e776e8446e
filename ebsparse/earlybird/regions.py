"""Timestep regions: which part of the diffusion trajectory each TA-EB model owns, and at what ratio.

A region is an inclusive timestep range ``[low, high]`` with its own ``pruning_ratio``. Regions may
overlap in *training* (the reference trains ``[0, 260]`` and ``[240, 460]``, so both models see
t = 240..260), but at *sampling* time every t belongs to exactly one model: the switch to region
i + 1 happens at its lower bound (t < 240 -> model 0, 240 <= t < 440 -> model 1, t >= 440 -> model 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Region", "PRESETS", "parse_regions", "validate_regions", "switch_points", "region_index",
           "weighted_ratio", "sampling_shares"]


@dataclass(frozen=True)
class Region:
    """Inclusive timestep range ``[low, high]`` trained at ``pruning_ratio``."""

    low: int
    high: int
    pruning_ratio: float

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Region.{name} must be an int >= 0, got {v!r}")
        if self.high < self.low:
            raise ValueError(f"Region: high ({self.high}) must be >= low ({self.low})")
        r = self.pruning_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise ValueError(f"Region.pruning_ratio must be a number in [0, 1), got {r!r}")
        object.__setattr__(self, "pruning_ratio", float(r))

    def contains(self, t: torch.Tensor) -> torch.Tensor:
        return (t >= self.low) & (t <= self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "pruning_ratio": self.pruning_ratio}

    def __str__(self) -> str:
        return f"[{self.low},{self.high}]@{self.pruning_ratio:g}"


#: The papers' settings (T = 1000). ``cifar10-3`` is the main TA-EB setting. The supplement's region
#: ablation (timestep-weighted average ratio kept at ~64%): ``cifar10-2`` merges the first two regions
#: (ratio 0.44 -> 64.2%), ``cifar10-4`` splits the last one (at 720/740, as the reference code).
#: ``celeba-2`` is the reference's CelebA setting; its training gap 261..439 is served by model 0.
PRESETS: dict[str, tuple[Region, ...]] = {
    "cifar10-3": (Region(0, 260, 0.3), Region(240, 460, 0.6), Region(440, 1000, 0.8)),
    "cifar10-2": (Region(0, 460, 0.44), Region(440, 1000, 0.8)),
    "cifar10-4": (Region(0, 260, 0.3), Region(240, 460, 0.6), Region(440, 740, 0.8), Region(720, 1000, 0.8)),
    "celeba-2": (Region(0, 260, 0.3), Region(440, 1000, 0.8)),
}


def parse_regions(value: Any) -> tuple[Region, ...]:
    """A preset name, or a list of ``{low, high, pruning_ratio}`` mappings / ``[low, high, ratio]`` rows."""
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"earlybird.regions={value!r}: expected one of {sorted(PRESETS)} or a list of "
                             "{low, high, pruning_ratio}")
        return PRESETS[value]
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"earlybird.regions must be a preset name or a non-empty list, got {value!r}")
    out = []
    for i, row in enumerate(value):
        if isinstance(row, Region):
            out.append(row)
        elif isinstance(row, Mapping):
            unknown = sorted(set(row) - {"low", "high", "pruning_ratio"})
            if unknown or not {"low", "high", "pruning_ratio"} <= set(row):
                raise ValueError(f"earlybird.regions[{i}] must have exactly the keys low, high, pruning_ratio; "
                                 f"got {sorted(row)}")
            out.append(Region(row["low"], row["high"], row["pruning_ratio"]))
        elif isinstance(row, Sequence) and not isinstance(row, str) and len(row) == 3:
            out.append(Region(row[0], row[1], row[2]))
        else:
            raise ValueError(f"earlybird.regions[{i}] must be {{low, high, pruning_ratio}} or [low, high, ratio], "
                             f"got {row!r}")
    return tuple(out)


def validate_regions(regions: Sequence[Region], num_timesteps: int) -> None:
    """Regions must be sorted by ``low``, have increasing bounds, start at 0 and reach T - 1.

    A region's ``high`` may reach T (the papers write ``[440, 1000]`` for T = 1000). Gaps between
    regions are allowed (the reference's CelebA setting has one): no model trains there, and at
    sampling time the model below the gap serves it (the switch is at the next lower bound).
    """
    if not regions:
        raise ValueError("regions: expected at least one region")
    if regions[0].low != 0:
        raise ValueError(f"regions: the first region must start at 0, got {regions[0]}")
    if regions[-1].high < num_timesteps - 1:
        raise ValueError(f"regions: the last region must reach t = {num_timesteps - 1}, got {regions[-1]}")
    for a, b in zip(regions, regions[1:]):
        if not (a.low < b.low and a.high < b.high):
            raise ValueError(f"regions: bounds must increase, got {a} then {b}")
    for r in regions:
        if r.low >= num_timesteps:
            raise ValueError(f"regions: {r} starts beyond the last timestep {num_timesteps - 1}")


def switch_points(regions: Sequence[Region]) -> list[int]:
    """Sampling boundaries: model i serves ``switch[i-1] <= t < switch[i]``; the switch is region i's lower bound."""
    return [r.low for r in regions[1:]]


def region_index(t: torch.Tensor, regions: Sequence[Region]) -> torch.Tensor:
    """The sampling-time region of each timestep (exactly one per t; see :func:`switch_points`)."""
    bounds = torch.tensor(switch_points(regions), dtype=torch.long, device=t.device)
    return torch.bucketize(t.long().contiguous(), bounds, right=True)


def sampling_shares(regions: Sequence[Region], timesteps: Sequence[int]) -> list[float]:
    """Fraction of the given (sampler's) timesteps each region's model serves."""
    idx = region_index(torch.as_tensor(list(timesteps), dtype=torch.long), regions)
    n = max(len(timesteps), 1)
    return [float((idx == i).sum()) / n for i in range(len(regions))]


def weighted_ratio(regions: Sequence[Region], num_timesteps: int = 1000) -> float:
    """Timestep-weighted average pruning ratio: each t in [0, T - 1] weighted by its sampling-time region."""
    return sum(s * r.pruning_ratio for s, r in zip(sampling_shares(regions, range(num_timesteps)), regions))
