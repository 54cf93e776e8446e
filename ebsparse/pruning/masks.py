"""Channel masks as data: one bool vector per dependency group, and how a ratio becomes a mask.

A mask never touches a model. Early-Bird compares the masks of consecutive epochs (normalised
Hamming distance over the concatenated vector) long before anything is pruned, so masks must be
comparable across runs: the group order is the stable order of :mod:`.graph`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import PruningError
from .graph import ChannelGroup, DependencyGroups

__all__ = ["ATTENTION_MODES", "ChannelMask", "hamming_distance", "kept_count", "select_channels"]


@dataclass(frozen=True)
class ChannelMask:
    """``keep[key]``: bool vector of the group's root channels (True = kept), in group order."""

    keep: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        for key, v in self.keep.items():
            if not isinstance(v, torch.Tensor) or v.dtype != torch.bool or v.ndim != 1:
                raise PruningError(f"ChannelMask[{key!r}] must be a 1-D bool tensor, got {v!r:.60}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.keep)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.keep[key]

    def vector(self) -> torch.Tensor:
        """All groups' vectors concatenated in group order (what the Hamming distance compares)."""
        if not self.keep:
            return torch.zeros(0, dtype=torch.bool)
        return torch.cat([v.cpu() for v in self.keep.values()])

    def signature(self) -> list[tuple[str, int]]:
        return [(k, int(v.numel())) for k, v in self.keep.items()]

    def density(self) -> float:
        v = self.vector()
        return float(v.float().mean()) if v.numel() else 1.0

    def pruned(self, key: str) -> list[int]:
        """Root channel indices removed from group ``key``, ascending."""
        return torch.nonzero(~self.keep[key]).flatten().tolist()

    def to_json(self) -> list[dict[str, Any]]:
        """Kept indices per group (plain lists: JSON, no pickle)."""
        return [{"key": k, "size": int(v.numel()), "keep": torch.nonzero(v).flatten().tolist()}
                for k, v in self.keep.items()]

    @classmethod
    def from_json(cls, rows: Any) -> ChannelMask:
        if not isinstance(rows, list):
            raise PruningError(f"mask JSON must be a list of {{key, size, keep}} rows, got {type(rows).__name__}")
        keep: dict[str, torch.Tensor] = {}
        for row in rows:
            try:
                key, size, kept = str(row["key"]), int(row["size"]), [int(i) for i in row["keep"]]
            except (KeyError, TypeError, ValueError) as e:
                raise PruningError(f"mask JSON row {row!r:.80} must have key, size and keep: {e}") from e
            if any(i < 0 or i >= size for i in kept) or len(set(kept)) != len(kept):
                raise PruningError(f"mask JSON group {key!r}: kept indices must be distinct and in [0, {size})")
            v = torch.zeros(size, dtype=torch.bool)
            v[kept] = True
            keep[key] = v
        return cls(keep)

    @classmethod
    def full(cls, groups: DependencyGroups) -> ChannelMask:
        return cls({g.key: torch.ones(g.size, dtype=torch.bool) for g in groups})


def hamming_distance(a: ChannelMask, b: ChannelMask) -> float:
    """``1 - mean(a == b)`` over the concatenated vectors (the Early-Bird mask distance).

    Raises :class:`PruningError` when the masks are of different models (different groups or sizes).
    """
    if a.signature() != b.signature():
        raise PruningError("hamming_distance(a, b): the masks have different groups or sizes; "
                           "they must come from the same model")
    va, vb = a.vector(), b.vector()
    if va.numel() == 0:
        return 0.0
    # exact count ratio: a float32 mean puts 2 of 20 channels at 0.10000002, just above eta = 0.1
    return int((va != vb).sum()) / va.numel()


ATTENTION_MODES = ("width", "heads")


def kept_count(group: ChannelGroup, ratio: float, round_to: int | None = None, attention: str = "width",
               head_dim_multiple: int = 1) -> int:
    """Channels the group keeps at ``ratio``; the reference's rule, then optional rounding.

    ``n_pruned = C - int(C * (1 - ratio))``; with P partitions (GroupNorm groups, heads) each part
    loses ``n_pruned // P``, so the kept count rounds *up* to a multiple of P (at 0.3: 128 -> 96,
    256 -> 192 with GroupNorm(32); 512 -> 358 without). ``round_to`` then moves the kept count to the
    nearest multiple of ``lcm(round_to, P)`` (ties up), at least one multiple and at most C.

    Multi-head attention groups (``group.heads``): ``attention="heads"`` keeps ``int(H * (1 - ratio))``
    whole heads (at least one); ``"width"`` keeps every head and the same width in each, rounded to
    the nearest multiple of ``head_dim_multiple`` (ties up; at least one multiple, at most the head
    width; a head narrower than the multiple keeps the exact rule), instead of ``round_to``.
    Raises :class:`PruningError` if a group would lose all its channels.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise PruningError(f"pruning_ratio must be a number in [0, 1), got {ratio!r}")
    if attention not in ATTENTION_MODES:
        raise PruningError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    c, parts = group.size, group.partitions
    if group.heads and attention == "heads":
        return max(1, int(group.heads * (1.0 - float(ratio)))) * (c // group.heads)
    n_pruned = c - int(c * (1.0 - float(ratio)))
    kept = c - (n_pruned // parts) * parts
    if group.heads and kept < c:
        width, per = c // parts, kept // parts
        m = int(head_dim_multiple)
        if m > 1 and width >= m:
            per = min(width, max(m, math.floor(per / m + 0.5) * m))
        kept = per * parts
    elif round_to is not None and kept < c:
        step = math.lcm(int(round_to), parts)
        if step <= c:
            kept = min(c - c % step, max(step, math.floor(kept / step + 0.5) * step))
    if kept <= 0:
        raise PruningError(f"pruning_ratio={ratio} would remove all {c} channels of group {group.key!r}; "
                           f"use a smaller ratio")
    return kept


def select_channels(groups: DependencyGroups, scores: Mapping[str, torch.Tensor], ratio: float,
                    round_to: int | None = None, on_unsupported: str = "error", attention: str = "width",
                    head_dim_multiple: int = 1, counts: Mapping[str, int] | None = None) -> ChannelMask:
    """Keep the highest-scoring channels of every group (lowest score pruned first; on ties the higher index goes).

    Pruning is even inside each of a group's partitions; with ``attention="heads"`` a multi-head
    attention group keeps its highest-scoring whole heads (a head's score: the sum of its channels').
    ``counts``: kept counts that replace :func:`kept_count` for the groups they name (tied widths,
    :mod:`.widths`); a multi-head group named there keeps whole heads, and a count must be a
    positive multiple of the head width or of the partition size. Unsupported groups raise
    :class:`PruningError` when ``ratio > 0`` unless ``on_unsupported == "skip"`` (then kept whole).
    """
    counts = counts or {}
    keep: dict[str, torch.Tensor] = {}
    for g in groups:
        full = torch.ones(g.size, dtype=torch.bool)
        if ratio == 0:
            keep[g.key] = full
            continue
        if not g.prunable:
            if on_unsupported == "skip":
                keep[g.key] = full
                continue
            raise PruningError(f"group {g.key!r} cannot be pruned: {g.unsupported}. Add its root to "
                               f"ignored_layers or set on_unsupported='skip'")
        n_keep = counts[g.key] if g.key in counts else kept_count(g, ratio, round_to, attention, head_dim_multiple)
        per = g.size // g.partitions
        whole_heads = bool(g.heads) and (attention == "heads" or g.key in counts)
        if g.key in counts and not (0 < n_keep <= g.size and n_keep % (per if whole_heads else g.partitions) == 0):
            raise PruningError(f"counts[{g.key!r}]={n_keep}: expected a positive multiple of "
                               f"{per if whole_heads else g.partitions} up to {g.size}")
        if g.key not in scores:
            raise PruningError(f"no importance scores for group {g.key!r}")
        s = scores[g.key].detach().float().cpu()
        if s.shape != (g.size,):
            raise PruningError(f"scores[{g.key!r}] has shape {tuple(s.shape)}, expected ({g.size},)")
        mask = torch.zeros(g.size, dtype=torch.bool)
        if whole_heads:
            head_scores = s.view(g.heads, per).double().sum(1)
            order = torch.sort(head_scores, stable=True, descending=True).indices
            mask.view(g.heads, per)[order[:n_keep // per]] = True
            keep[g.key] = mask
            continue
        keep_per = n_keep // g.partitions
        for p in range(g.partitions):
            part = s[p * per:(p + 1) * per]
            order = torch.sort(part, stable=True, descending=True).indices  # high first; ties: low index
            mask[p * per + order[:keep_per]] = True
        keep[g.key] = mask
    return ChannelMask(keep)
