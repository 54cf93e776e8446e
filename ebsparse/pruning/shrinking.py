"""Physical shrink: turn a channel mask into a really smaller model, or zero it in place of one.

``shrink`` works on a deep copy: the input model is never modified, so an error halfway (a layer
that cannot be cut, a forward that no longer runs) leaves nothing half-pruned behind. The copy is
checked before it is returned: every GroupNorm still divides its channels into whole groups, and
one forward pass with the example inputs runs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .errors import PruningError
from .fixups import apply_fixups
from .graph import ChannelGroup, DependencyGroups, build_groups
from .inputs import ExampleInputs, call_with, check_inputs
from .masks import ChannelMask

__all__ = ["check_mask", "masked_dense", "shrink", "shrink_in_place"]


def check_mask(groups: DependencyGroups, mask: ChannelMask) -> None:
    """Raise :class:`PruningError` unless ``mask`` fits ``groups`` and can be cut physically."""
    if mask.signature() != groups.signature():
        mine, theirs = dict(groups.signature()), dict(mask.signature())
        missing = sorted(set(mine) - set(theirs))[:5]
        extra = sorted(set(theirs) - set(mine))[:5]
        sizes = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])[:5]
        raise PruningError(f"the mask/recipe does not match the model's dependency groups: missing {missing}, "
                           f"unknown {extra}, different sizes {sizes}")
    for g in groups:
        keep = mask[g.key]
        if bool(keep.all()):
            continue
        if not keep.any():
            raise PruningError(f"group {g.key!r} would lose all its {g.size} channels")
        if not g.prunable:
            raise PruningError(f"group {g.key!r} cannot be pruned: {g.unsupported}")
        per = keep.view(g.partitions, -1).sum(1)
        kept = per[per > 0] if g.heads else per  # attention heads may go whole; GroupNorm parts may not
        if g.partitions > 1 and not bool((kept == kept[0]).all()):
            raise PruningError(f"group {g.key!r}: its {g.partitions} {'heads' if g.heads else 'GroupNorm/head partitions'} "
                               f"must keep equally many channels{' (or none)' if g.heads else ''}, got {per.tolist()}")


def _member_pruned(g: ChannelGroup, gone: set[int]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for m in g.members:
        idxs = sorted({i for i, r in zip(m.idxs, m.root_idxs) if r in gone})
        if idxs:
            out.setdefault((m.name, m.kind), []).extend(idxs)
    return out


def shrink_in_place(model: nn.Module, groups: DependencyGroups, mask: ChannelMask) -> dict[tuple[str, str], list[int]]:
    """Cut the pruned channels out of ``model`` (which ``groups`` was traced on). Returns, per
    ``(layer name, "in"/"out")``, the channel indices removed. Prefer :func:`shrink`."""
    check_mask(groups, mask)
    tracer = groups.graph
    removed: dict[tuple[str, str], list[int]] = {}
    for g in groups:
        gone = mask.pruned(g.key)
        if not gone:
            continue
        cuts = _member_pruned(g, set(gone))
        for k, v in cuts.items():
            removed.setdefault(k, []).extend(v)
        if g.manual:
            _cut(model, cuts)
        else:
            tracer.group_for(groups.roots[g.key], gone).prune()
    apply_fixups(model, removed)
    return removed


@torch.no_grad()
def _cut(model: nn.Module, cuts: dict[tuple[str, str], list[int]]) -> None:
    """Remove channels of Linear/Conv members directly (groups the tracer maps wrongly)."""
    modules = dict(model.named_modules())
    for (name, kind), idxs in cuts.items():
        m = modules[name]
        if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            raise PruningError(f"cannot cut {kind}-channels of {name!r} ({type(m).__name__})")
        dim = 0 if kind == "out" else 1
        n = m.weight.shape[dim]
        keep = torch.tensor(sorted(set(range(n)) - set(idxs)), dtype=torch.long, device=m.weight.device)
        m.weight = nn.Parameter(m.weight.index_select(dim, keep).contiguous(), m.weight.requires_grad)
        if dim == 0 and m.bias is not None:
            m.bias = nn.Parameter(m.bias.index_select(0, keep).contiguous(), m.bias.requires_grad)
        attr = {(True, "out"): "out_features", (True, "in"): "in_features",
                (False, "out"): "out_channels", (False, "in"): "in_channels"}[(isinstance(m, nn.Linear), kind)]
        setattr(m, attr, keep.numel())


def _validate(model: nn.Module, example_inputs: ExampleInputs) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm) and m.num_channels % m.num_groups:
            raise PruningError(f"after shrinking, GroupNorm {name!r} has {m.num_channels} channels, not divisible "
                               f"by its {m.num_groups} groups")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_with(model, example_inputs)
    except Exception as e:
        raise PruningError(f"the shrunk {type(model).__name__} no longer runs ({type(e).__name__}: {e}); "
                           f"a coupling the tracer did not see - ignore the group's root layer") from e
    finally:
        model.train(was_training)


def shrink(model: nn.Module, mask: ChannelMask, example_inputs: ExampleInputs,
           ignored_layers: Sequence[str] | None = None, groups: DependencyGroups | None = None) -> nn.Module:
    """A new, physically smaller copy of ``model`` that keeps the channels ``mask`` keeps.

    ``example_inputs``: inputs of one forward call, positional (tuple) or keyword (mapping; see
    :mod:`.inputs`), batch 1 and a small resolution are enough;
    used to trace the copy and to check that it runs. ``ignored_layers`` must be the ones the mask's
    groups were built with. ``groups`` may pass groups already traced on a model that is not used
    again (it is then shrunk in place instead of copied). Raises :class:`PruningError`.
    """
    example_inputs = check_inputs(example_inputs)
    work = model if groups is not None else copy.deepcopy(model)
    groups = groups or build_groups(work, example_inputs, ignored_layers)
    shrink_in_place(work, groups, mask)
    _validate(work, example_inputs)
    return work


@torch.no_grad()
def masked_dense(model: nn.Module, groups: DependencyGroups, mask: ChannelMask) -> nn.Module:
    """A copy of ``model`` at full width with every pruned channel zeroed: producer rows and biases,
    norm scales and shifts, consumer columns. The oracle for :func:`shrink` where the removal of a
    channel cannot change what the others compute (no normalisation statistics over it)."""
    check_mask(groups, mask)
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    for g in groups:
        gone = set(mask.pruned(g.key))
        if not gone:
            continue
        for (name, kind), idxs in _member_pruned(g, gone).items():
            mod = modules.get(name)
            if mod is None:
                continue
            idx = torch.tensor(idxs, dtype=torch.long)
            w = getattr(mod, "weight", None)
            if isinstance(mod, nn.Embedding):
                w[:, idx] = 0
                continue
            if w is not None:
                w.index_fill_(0 if kind == "out" else 1, idx, 0.0)
            b = getattr(mod, "bias", None)
            if kind == "out" and b is not None:
                b.index_fill_(0, idx, 0.0)
    return work
