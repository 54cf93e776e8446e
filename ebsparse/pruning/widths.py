"""Tied kept counts: widths that must move together so that a pruned model stays one a config describes.

``PruningConfig.widths="diffusers"``: a diffusers ``UNet2DModel`` is rebuilt by ``from_pretrained``
from its config, which has one width per resolution level (``block_out_channels``), one
``time_embedding_dim``, and attention heads of ``attention_head_dim`` channels (one head of the
level's width when it is ``None``). The reference's rule prunes every dependency group on its own:
a resnet's inner width, the single-head attention width and the time MLP come out different from
the level's (GroupNorm rounding applies to some groups only), and the level-0 width also sets the
number of sinusoidal timestep features (``Timesteps(block_out_channels[0])``), an input that no
channel pruning can shrink. So under this rule:

- level 0 (``conv_in`` and every block at full resolution) is kept whole;
- every group of level ``i > 0`` keeps the count the reference's rule gives the level's group with
  the most GroupNorm parts (the residual width), chosen by each group's own scores; a multi-head
  attention group keeps ``count // attention_head_dim`` whole heads; levels joined by one group
  (equal widths around an identity skip) are one level here, and a level whose width differs from
  the one before keeps differing (one GroupNorm part more or less, whichever is nearer the ratio:
  diffusers builds a down block's shortcut conv only between different widths);
- the time-embedding MLP's widths keep one count (its ``time_embedding_dim``).

A model pruned so has exactly the shapes of ``UNet2DModel(**config)`` with ``block_out_channels``
and ``time_embedding_dim`` replaced (``ebsparse.models.diffusers_export`` checks this when it
writes the folder).
"""

from __future__ import annotations

import re

from torch import nn

from .config import PruningConfig
from .errors import PruningError
from .graph import DependencyGroups
from .masks import kept_count

__all__ = ["tied_counts", "unet_levels"]


def tied_counts(model: nn.Module, groups: DependencyGroups, config: PruningConfig) -> dict[str, int]:
    """Kept counts that replace the per-group rule (``select_channels(counts=...)``); empty for
    ``widths="groups"``. Raises :class:`PruningError` when the model has nothing the rule ties."""
    if config.widths == "groups" or config.pruning_ratio == 0:
        return {}
    prefix, unet = _find_unet(model)
    sizes = list(unet.config.block_out_channels)
    num = len(sizes)
    # a group's levels: those of the Conv/Linear layers whose outputs it is (a norm's "output" is
    # its input's width); a group reaching two levels (equal widths, an identity skip) ties them
    parent = list(range(num))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    time, tied = [], []
    for g in groups:
        if not (g.prunable and g.key.startswith(prefix)):
            continue
        levels = set()
        for m in g.members:
            if m.kind == "out" and m.name.startswith(prefix) and \
                    isinstance(model.get_submodule(m.name), (nn.Conv2d, nn.Linear)):
                levels.add(unet_levels(m.name[len(prefix):], num))
        if levels == {"time"}:
            time.append(g)
            continue
        levels.discard(None)
        if not levels:
            continue
        if "time" in levels:
            raise PruningError(f"widths='diffusers': group {g.key!r} ties the time embedding to a level")
        first, *rest = sorted(levels)
        for other in rest:
            parent[find(other)] = find(first)
        tied.append((g, first))
    counts: dict[str, int] = {}
    if time:
        n = min(kept_count(g, config.pruning_ratio, config.round_to) for g in time)
        counts.update({g.key: n for g in time})
    sets: dict[int, list] = {}
    for g, level in tied:
        sets.setdefault(find(level), []).append(g)
    kept = {}
    for root, members in sets.items():
        levels = [i for i in range(num) if find(i) == root]
        wrong = [g.key for g in members if g.size != sizes[levels[0]]]
        if wrong or len({sizes[i] for i in levels}) > 1:
            raise PruningError(f"widths='diffusers': groups {wrong or [g.key for g in members]} do not all have "
                               f"the width of levels {levels} (block_out_channels={sizes})")
        base = max(members, key=lambda g: g.partitions)
        kept[root] = (sizes[levels[0]] if 0 in levels else kept_count(base, config.pruning_ratio, config.round_to),
                      base.partitions)
    # a down block whose input and output widths differ has a 1x1 shortcut conv, which diffusers
    # builds only when the widths differ: pruning must not make them equal
    width = lambda i: kept[find(i)][0] if find(i) in kept else sizes[i]  # noqa: E731
    for i in range(1, num):
        if sizes[i] != sizes[i - 1] and width(i) == width(i - 1) and find(i) in kept:
            n, step = kept[find(i)]
            target = sizes[i] * (1 - config.pruning_ratio)
            options = [m for m in (n - step, n + step) if 0 < m <= sizes[i] and m != width(i - 1)]
            if not options:
                raise PruningError(f"widths='diffusers': level {i} cannot keep a width other than level {i - 1}'s "
                                   f"{n}; use another pruning_ratio")
            kept[find(i)] = (min(options, key=lambda m: (abs(m - target), -m)), step)  # ties: keep more
    for root, members in sets.items():
        n = kept[root][0]
        for g in members:
            if g.heads:
                d = g.size // g.heads
                if n < d:
                    raise PruningError(f"widths='diffusers': a level keeps {n} channels, fewer than one "
                                       f"attention head of {d} ({g.key!r}); use a smaller pruning_ratio")
                counts[g.key] = (n // d) * d
            else:
                counts[g.key] = n
    return counts


def unet_levels(name: str, num_levels: int) -> int | str | None:
    """The level (index into ``block_out_channels``) whose width a ``UNet2DModel`` module's output
    channels have, ``"time"`` for the time-embedding MLP, or None (not tied)."""
    if name == "conv_in":
        return 0
    if name.startswith("time_embedding."):
        return "time"
    if name.startswith("mid_block."):
        return num_levels - 1
    m = re.match(r"(down|up)_blocks\.(\d+)\.", name)
    if m is None:
        return None
    i = int(m.group(2))
    return i if m.group(1) == "down" else num_levels - 1 - i


def _find_unet(model: nn.Module) -> tuple[str, nn.Module]:
    for name, m in model.named_modules():
        if type(m).__name__ == "UNet2DModel" and type(m).__module__.startswith("diffusers."):
            return (f"{name}." if name else ""), m
    raise PruningError("widths='diffusers' ties the widths of a diffusers UNet2DModel, and the model holds none "
                       "(UNet2DConditionModel and DiT widths are not tied; use widths='groups')")
