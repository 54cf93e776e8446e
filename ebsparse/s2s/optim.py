"""Optimizer state across mask updates: Adam/AdamW moments of dropped and grown weights restart at 0.

Without this (a bug of several public ports) a grown weight inherits the stale moments of the last
time it was active, and a dropped weight's momentum keeps pushing a value the mask then erases.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ebsparse.nn.sharded import mask_like

__all__ = ["MOMENT_KEYS", "check_optimizer", "rebind_parameters", "reset_moments"]

MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_SUPPORTED = (torch.optim.Adam, torch.optim.AdamW)


def check_optimizer(optimizer: torch.optim.Optimizer, declared_safe: bool) -> None:
    """Raise unless the optimizer's state is one this module knows how to reset, or declared safe."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(optimizer, _SUPPORTED) and not declared_safe:
        raise ValueError(
            f"optimizer: {type(optimizer).__name__} keeps per-weight state that sparse-to-sparse "
            "training cannot reset (only Adam and AdamW are handled); pass optimizer_safe=True if its "
            "state needs no reset (e.g. SGD without momentum)"
        )


def rebind_parameters(optimizer: torch.optim.Optimizer, mapping: dict[nn.Parameter, nn.Parameter]) -> None:
    """Point ``optimizer`` at the new parameters of swapped modules, moving any state along."""
    if not mapping:
        return
    for group in optimizer.param_groups:
        group["params"] = [mapping.get(p, p) for p in group["params"]]
    for before, after in mapping.items():
        if before in optimizer.state:
            optimizer.state[after] = optimizer.state.pop(before)


@torch.no_grad()
def reset_moments(optimizer: torch.optim.Optimizer, weight: torch.Tensor, keep: torch.Tensor,
                  keys: Iterable[str] = MOMENT_KEYS) -> None:
    """Zero the moments of ``weight`` wherever ``keep`` is False (dropped, grown, inactive).

    ``keep`` is the whole mask; sharded moments (FSDP2) are masked shard by shard."""
    state = optimizer.state.get(weight)
    if not state:
        return
    for key in keys:
        if key in state and isinstance(state[key], torch.Tensor) and state[key].shape == weight.shape:
            state[key].mul_(mask_like(keep, state[key]))
