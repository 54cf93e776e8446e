"""Trainer plugins of the Early-Bird pipeline: how the ticket logic rides on the one training loop
(:class:`ebsparse.diffusion.trainer.Trainer`) through its plugin hooks.

- :class:`TicketPlugin`: at the end of every pseudo-epoch, the mask each tracked ticket would have
  now (from the EMA weights, nothing pruned) goes into that ticket's :class:`TicketTracker`.
- :class:`StageClock`: wall-clock seconds of training steps only (no checkpoint writes, no mask
  computation), kept in the checkpoint so that a resumed stage reports its whole cost.
- :class:`GradAllReduce`: averages gradients inside one process group (region-parallel training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..diffusion.plugins import TrainerPlugin
from ..pruning.config import PruningConfig
from ..pruning.graph import build_groups
from ..pruning.importance import compute_importance
from ..pruning.masks import select_channels
from ..pruning.widths import tied_counts
from .tickets import TicketTracker

__all__ = ["TicketSpec", "TicketPlugin", "StageClock", "GradAllReduce"]


@dataclass
class TicketSpec:
    """One ticket to track: its name (``eb``, ``region0``, ...), pruner config and (Taylor) loss."""

    name: str
    config: PruningConfig
    loss_fn: Callable[[int], Callable] | None = None  # step -> loss closure (seeded by step: exact resume)


class TicketPlugin(TrainerPlugin):
    """Adds one mask per tracked ticket every ``every`` steps.

    A ticket is *resolved* when its tracker finds it, or (``give_up_step``) at the first pseudo-epoch
    at or after that step without a ticket; the names resolved by the latest step wait in
    ``pending`` so the caller can snapshot the EMA weights before the next step changes them.
    """

    name = "earlybird"

    def __init__(self, specs: Sequence[TicketSpec], example_inputs: Sequence[torch.Tensor], every: int,
                 eta: float = 0.1, queue_length: int = 5, give_up_step: int | None = None):
        if every < 1:
            raise ValueError(f"TicketPlugin(every={every}): expected a positive number of steps")
        self.specs = {s.name: s for s in specs}
        self.trackers = {s.name: TicketTracker(eta, queue_length) for s in specs}
        self.example_inputs = tuple(example_inputs)
        self.every = every
        self.give_up_step = give_up_step
        self.resolved: dict[str, bool] = {}  # name -> found (True) or given up (False)
        self.pending: list[str] = []
        self.tracking_s = 0.0
        self._groups = None

    def all_resolved(self) -> bool:
        return len(self.resolved) == len(self.trackers)

    def masks_now(self, trainer) -> dict[str, Any]:
        """The mask every tracked ticket would have at this moment (scores shared where configs agree)."""
        if self._groups is None:
            ignored = {spec.config.ignored_layers for spec in self.specs.values()}
            if len(ignored) > 1:
                raise ValueError(f"ticket specs must share ignored_layers (one dependency graph), got {ignored}")
            self._groups = build_groups(trainer.model, self.example_inputs, next(iter(ignored), None))
        ema = trainer.ema.state_dict()
        cache: dict[tuple, dict[str, torch.Tensor]] = {}
        masks = {}
        for name, spec in self.specs.items():
            c = spec.config
            key = (c.importance, c.taylor_t_range if c.importance == "taylor" else None)
            if key not in cache:
                loss = spec.loss_fn(trainer.step) if spec.loss_fn is not None else None
                cache[key] = compute_importance(trainer.model, self._groups, c, ema_state=ema, loss_fn=loss)
            masks[name] = select_channels(self._groups, cache[key], c.pruning_ratio, c.round_to, c.on_unsupported,
                                          c.attention, c.head_dim_multiple,
                                          tied_counts(trainer.model, self._groups, c))
        return masks

    def after_step(self, trainer, stats: dict[str, float]) -> None:
        if trainer.step % self.every:
            return
        self.record(trainer)

    def record(self, trainer, give_up: bool = False) -> None:
        """Add the current masks; resolve tickets found now (or all open ones when ``give_up``)."""
        t0 = time.perf_counter()
        if not self.trackers or self.trackers[next(iter(self.trackers))].steps[-1:] != [trainer.step]:
            for name, mask in self.masks_now(trainer).items():
                self.trackers[name].update(mask, trainer.step)
        give_up = give_up or (self.give_up_step is not None and trainer.step >= self.give_up_step)
        for name, tracker in self.trackers.items():
            if name not in self.resolved and (tracker.found or give_up):
                self.resolved[name] = tracker.found
                self.pending.append(name)
        self.tracking_s += time.perf_counter() - t0

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"tracking_s": self.tracking_s, "every": self.every, "resolved": dict(self.resolved),
                    "pending": list(self.pending),
                    "trackers": {k: t.state_dict() for k, t in self.trackers.items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if sorted(meta["trackers"]) != sorted(self.trackers) or meta["every"] != self.every:
            raise ValueError(f"cannot resume the ticket search: the checkpoint tracks {sorted(meta['trackers'])} "
                             f"every {meta['every']} steps, this run {sorted(self.trackers)} every {self.every}")
        for k, t in self.trackers.items():
            t.load_state_dict(meta["trackers"][k])
        self.tracking_s = float(meta["tracking_s"])
        self.resolved = {str(k): bool(v) for k, v in meta["resolved"].items()}
        self.pending = list(meta["pending"])


class StageClock(TrainerPlugin):
    """Seconds spent in training steps (``Trainer.step_seconds``: no ticket tracking, no checkpoint
    writes), saved with the checkpoint so a resumed stage reports its whole cost."""

    name = "clock"

    def __init__(self) -> None:
        self.train_s = 0.0

    def after_step(self, trainer, stats: dict[str, float]) -> None:
        self.train_s += trainer.step_seconds

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"train_s": self.train_s}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.train_s = float(meta["train_s"])


class GradAllReduce(TrainerPlugin):
    """Average gradients over ``group`` (the processes that train one region model), before the step."""

    name = "allreduce"

    def __init__(self, group) -> None:
        self.group = group

    def after_backward(self, trainer) -> bool:
        import torch.distributed as dist

        size = dist.get_world_size(self.group)
        if size == 1:
            return True
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat, group=self.group)
        flat /= size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return True
