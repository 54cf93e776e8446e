"""When masks are updated and by how much: every ``update_every`` steps between ``begin_step`` and
``end_step``, dropping ``prune_fraction`` of the active weights, optionally cosine-decayed (RigL)."""

from __future__ import annotations

import math

from .config import SparsityConfig

__all__ = ["UpdateSchedule"]


class UpdateSchedule:
    """Steps are counted from 1: step ``t`` is the t-th optimizer step of the run."""

    def __init__(self, config: SparsityConfig):
        self.update_every = config.update_every
        self.begin, self.end = config.begin_step, config.end_step
        self.alpha = config.prune_fraction
        self.decay = config.prune_fraction_decay
        if self.decay == "cosine" and self.end is None:
            raise ValueError("sparsity.end_step: prune_fraction_decay='cosine' needs an end_step to decay to")

    def is_update(self, t: int) -> bool:
        if t < max(self.begin, 1) or (self.end is not None and t > self.end):
            return False
        return (t - self.begin) % self.update_every == 0

    def prune_fraction(self, t: int) -> float:
        """α for constant decay; α·½(1 + cos(π·min(t − begin, T)/T)), T = end − begin, for cosine."""
        if self.decay == "constant":
            return self.alpha
        span = self.end - self.begin
        return self.alpha * 0.5 * (1.0 + math.cos(math.pi * min(t - self.begin, span) / span))
