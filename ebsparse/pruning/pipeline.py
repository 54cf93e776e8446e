"""One call from a dense model to a pruned one: trace, score, select, shrink.

Split into :func:`plan` (no model is changed: groups, scores, mask; what Early-Bird calls every epoch)
and :func:`prune` (plan, then a physically smaller copy).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import PruningConfig
from .graph import DependencyGroups, build_groups
from .importance import compute_importance
from .inputs import ExampleInputs, check_inputs
from .masks import ChannelMask, select_channels
from .shrinking import shrink
from .widths import tied_counts

__all__ = ["Plan", "PruneResult", "plan", "prune"]


@dataclass
class Plan:
    """What a prune would do: the groups, each channel's score and the resulting mask."""

    groups: DependencyGroups
    scores: dict[str, torch.Tensor]
    mask: ChannelMask


@dataclass
class PruneResult:
    model: nn.Module
    mask: ChannelMask
    config: PruningConfig
    scores: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def plan(model: nn.Module, example_inputs: ExampleInputs, config: PruningConfig,
         ema_state: Mapping[str, torch.Tensor] | None = None,
         loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
         groups: DependencyGroups | None = None) -> Plan:
    """Groups, scores (from ``ema_state`` when given) and the mask at ``config.pruning_ratio``.

    ``example_inputs``: one forward call's inputs, a tuple (positional) or a mapping (keyword, as
    diffusers' models take ``sample=``, ``timestep=``, ``class_labels=``, ``encoder_hidden_states=``).
    ``model`` is not modified. Raises :class:`PruningError` for bad inputs, bad ratios, groups that would lose
    every channel, or unsupported groups (see ``PruningConfig.on_unsupported``).
    """
    config.validate()
    example_inputs = check_inputs(example_inputs)
    groups = groups or build_groups(model, example_inputs, config.ignored_layers)
    scores = compute_importance(model, groups, config, ema_state=ema_state, loss_fn=loss_fn)
    mask = select_channels(groups, scores, config.pruning_ratio, config.round_to, config.on_unsupported,
                           config.attention, config.head_dim_multiple, tied_counts(model, groups, config))
    return Plan(groups, scores, mask)


def prune(model: nn.Module, example_inputs: ExampleInputs, config: PruningConfig,
          ema_state: Mapping[str, torch.Tensor] | None = None,
          loss_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> PruneResult:
    """A physically pruned copy of ``model`` (whose weights it keeps: load the EMA into ``model``
    first if the pruned model should carry it). ``model`` itself is never modified."""
    example_inputs = check_inputs(example_inputs)
    work = copy.deepcopy(model)
    p = plan(work, example_inputs, config, ema_state=ema_state, loss_fn=loss_fn,
             groups=build_groups(work, example_inputs, config.ignored_layers))
    pruned = shrink(work, p.mask, example_inputs, groups=p.groups)
    return PruneResult(pruned, p.mask, config, p.scores)
