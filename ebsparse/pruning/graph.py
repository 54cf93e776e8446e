"""Dependency groups: the sets of channels that must be removed together, as plain data.

The graph is traced by ``torch-pruning``'s ``DependencyGraph`` (autograd-graph tracing of one forward
pass). It already knows what a diffusion U-Net needs: element-wise ops (residual adds, the ``temb``
broadcast add, attention matmuls) couple channels, ``torch.cat`` skips map indices with offsets,
``chunk``/``split`` map adaLN modulation rows, GroupNorm keeps its group count. Building this ourselves
would mean re-deriving those index mappings for every third-party model; the library is the one the
reference code bases use, so its groups are the reference's groups by construction.

On top of it this module adds what the library does not do:

- a **stable order and key** per group (the name of its canonical producer, in ``named_modules`` order),
  independent of tracing order, so masks of two runs line up;
- a canonical **root**: the producer with the fewest channels, so that a group reached through
  ``chunk`` (DiT's adaLN rows, 6 x hidden) is counted in hidden channels, not rows;
- **partitions**: GroupNorm groups and attention heads inside which channels are removed evenly;
- **support checks**: a group holding a layer we cannot shrink, or whose index mapping the tracer
  could not follow, is marked unsupported with the reason, instead of being mis-pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import PruningError
from .inputs import ExampleInputs, check_inputs

__all__ = ["SUPPORTED_LAYERS", "ChannelGroup", "DependencyGroups", "Member", "build_groups"]

#: Layer types whose channels the shrink step can remove (Conv only with ``groups == 1``).
SUPPORTED_LAYERS: tuple[type, ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.GroupNorm, nn.LayerNorm,
    nn.modules.batchnorm._BatchNorm, nn.Embedding,
)


@dataclass(frozen=True)
class Member:
    """One layer's share of a group: ``kind`` is ``"out"`` (its output channels) or ``"in"``.

    ``idxs[i]`` is the layer's channel that moves with the group's root channel ``root_idxs[i]``
    (several layer channels may share one root channel, e.g. the 6 adaLN rows of one hidden channel).
    """

    name: str
    kind: str
    layer: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels pruned together. ``size`` root channels; ``partitions`` equal parts pruned evenly.

    ``heads``: the group is a multi-head attention inner width and its partitions are its heads
    (``heads == partitions``), so a whole head may go (0 kept) where a GroupNorm part may not.
    ``manual``: the shrink cuts the members itself (by ``Member.idxs``) instead of asking the tracer,
    whose index mapping is wrong for this group (a fused qkv's (3, heads, head_dim) rows).
    """

    key: str
    size: int
    partitions: int
    members: tuple[Member, ...]
    unsupported: str = ""
    heads: int = 0
    manual: bool = False

    @property
    def prunable(self) -> bool:
        return not self.unsupported

    def member_names(self, kind: str | None = None) -> list[str]:
        return [m.name for m in self.members if kind is None or m.kind == kind]


@dataclass
class DependencyGroups:
    """All groups of one model, in a stable order, plus the traced graph for shrinking that model."""

    groups: list[ChannelGroup]
    graph: Any = field(repr=False, default=None)
    roots: dict[str, nn.Module] = field(repr=False, default_factory=dict)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: str) -> ChannelGroup:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(f"no dependency group {key!r}; groups are {[g.key for g in self.groups]}")

    def signature(self) -> list[tuple[str, int]]:
        """``(key, size)`` per group: what a mask or recipe must match."""
        return [(g.key, g.size) for g in self.groups]


def _fused_qkv(name: str, attn: nn.Module) -> ChannelGroup | None:
    """The inner-width group of an attention with one fused ``qkv`` linear (timm / DiT layout: rows
    ``(3, heads, head_dim)``) and an output ``proj``: root channel ``i`` of the inner width owns qkv
    rows ``i``, ``inner + i``, ``2 * inner + i`` and proj column ``i``. The tracer maps the rows as one
    flat width, so this group is built here and cut by the shrink itself."""
    qkv, proj, heads = getattr(attn, "qkv", None), getattr(attn, "proj", None), getattr(attn, "num_heads", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(heads, int)):
        return None
    inner = qkv.out_features // 3
    if qkv.out_features != 3 * inner or proj.in_features != inner or inner % heads:
        return None
    rows = tuple(s * inner + i for s in range(3) for i in range(inner))
    members = (Member(f"{name}.qkv", "out", "Linear", rows, tuple(i for _ in range(3) for i in range(inner))),
               Member(f"{name}.proj", "in", "Linear", tuple(range(inner)), tuple(range(inner))))
    return ChannelGroup(f"{name}.qkv", inner, heads, members, heads=heads if heads > 1 else 0, manual=True)


#: Attention modules whose inner-width group the tracer gets wrong, by "module.QualName" -> builder.
_FUSED_ATTENTION: dict[str, Callable[[str, nn.Module], ChannelGroup | None]] = {
    "ebsparse.models.dit.Attention": _fused_qkv,
}


def _is_tp_internal(module: Any) -> bool:
    return type(module).__module__.startswith("torch_pruning")


def _tp():
    try:
        import torch_pruning
    except ImportError as e:  # pragma: no cover - install-time problem
        raise ImportError("ebsparse.pruning needs torch-pruning: pip install torch-pruning==1.6.1") from e
    return torch_pruning


def _layer_dim(module: Any, kind: str) -> int | None:
    if isinstance(module, nn.Parameter):
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if kind == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if kind == "out" else module.in_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    return None


def _unsupported_reason(module: Any, name: str, kind: str, idxs: Sequence[int]) -> str:
    if isinstance(module, nn.Parameter):
        return ""
    if not isinstance(module, SUPPORTED_LAYERS):
        return f"layer {name!r} ({type(module).__name__}) is not a supported layer type"
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
        return f"layer {name!r} is a grouped convolution (groups={module.groups}); only groups=1 is supported"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return f"layer {name!r} ({type(module).__name__}) is a transposed convolution; not supported"
    dim = _layer_dim(module, kind)
    if dim is not None and idxs and max(idxs) >= dim:
        return (f"layer {name!r} {kind}-channels: the traced index mapping reaches channel {max(idxs)} of {dim} "
                f"(a reshape the tracer could not follow)")
    return ""


class _Tracer:
    """Owns one torch-pruning graph and turns its groups into :class:`ChannelGroup` data."""

    def __init__(self, model: nn.Module, example_inputs: Any, ignored: Sequence[str] | None):
        tp = _tp()
        self.tp = tp
        self.model = model
        self.names: dict[Any, str] = {m: n for n, m in model.named_modules()}
        self.order: dict[str, int] = {n: i for i, (n, _) in enumerate(model.named_modules())}
        pnames = {p: n for n, p in model.named_parameters()}
        by_name = dict(model.named_modules())
        missing = [n for n in ignored or () if n not in by_name]
        if missing:
            raise PruningError(f"ignored_layers {missing} are not modules of {type(model).__name__}")
        self.ignored = [by_name[n] for n in ignored or ()]
        # Parameters used directly in forward (DiT's position table) are pruned along the channel dim.
        owned = {id(p) for m in model.modules() if isinstance(m, SUPPORTED_LAYERS) for p in m.parameters(recurse=False)}
        unwrapped = [(p, -1) for p in model.parameters() if id(p) not in owned and p.ndim >= 2]
        executed: list[nn.Module] = []
        hooks = [m.register_forward_hook(lambda mod, i, o: executed.append(mod))
                 for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        was_training = model.training
        try:
            inputs = check_inputs(example_inputs)  # torch-pruning calls model(**inputs) for a dict
            self.graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, unwrapped_parameters=unwrapped or None, verbose=False)
        except Exception as e:
            raise PruningError(f"tracing {type(model).__name__} with the example inputs failed: {e}") from e
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        if ignored is None:
            # The reference ignores only the output conv: the last Conv/Linear the forward runs.
            if not executed:
                raise PruningError(f"{type(model).__name__} ran no Conv/Linear layer; nothing to prune")
            self.ignored = [executed[-1]]
        for p, n in pnames.items():
            self.names.setdefault(p, n)
        self.fused = self._fused_groups()

    def _fused_groups(self) -> dict[str, ChannelGroup]:
        """Fused-qkv attention groups, keyed by their qkv layer's name."""
        fused = {}
        for name, m in self.model.named_modules():
            rule = _FUSED_ATTENTION.get(f"{type(m).__module__}.{type(m).__qualname__}")
            group = rule(name, m) if rule is not None else None
            if group is not None:
                fused[group.key] = group
        return fused

    def _name(self, module: Any) -> str:
        return self.names.get(module, f"<{type(module).__name__}>")

    def group_for(self, root: nn.Module, idxs: Sequence[int]):
        pruner = self.graph.get_pruner_of_module(root)
        return self.graph.get_pruning_group(root, pruner.prune_out_channels, list(idxs))

    def _members(self, tp_group) -> list[Member]:
        members = []
        for item in tp_group.items:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if _is_tp_internal(module):
                continue
            kind = "out" if self.graph.is_out_channel_pruning_fn(dep.handler) else "in"
            members.append(Member(self._name(module), kind, type(module).__name__,
                                  tuple(int(i) for i in idxs), tuple(int(i) for i in item.root_idxs)))
        return members

    def _partitions(self, members: list[Member], size: int) -> tuple[int, str]:
        """GroupNorm(G) in a group: its root channels are pruned evenly inside G equal parts (the
        reference's rule, which keeps every GroupNorm's channel count divisible by G, also where a
        concatenation feeds it). Multi-head attention inner dims: evenly inside each head."""
        modules = dict(self.model.named_modules())
        parts, heads = 1, 0
        for m in members:
            mod = modules.get(m.name)
            if isinstance(mod, nn.GroupNorm):
                parts = math.lcm(parts, mod.num_groups)
            parent = modules.get(m.name.rsplit(".", 1)[0]) if "." in m.name else None
            heads = getattr(parent, "heads", None)
            if (isinstance(heads, int) and heads > 1 and m.kind == "out"
                    and m.name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")):
                parts = math.lcm(parts, heads)
        if size % parts:
            return 1, f"{size} channels cannot be split into {parts} equal GroupNorm/head partitions"
        return parts, ""

    def _heads(self, members: list[Member], parts: int) -> int:
        """The attention heads a group's partitions are (0 if they are not all heads: GroupNorm)."""
        modules = dict(self.model.named_modules())
        found = 0
        for m in members:
            mod = modules.get(m.name)
            if isinstance(mod, nn.GroupNorm) and mod.num_groups > 1:
                return 0
            parent = modules.get(m.name.rsplit(".", 1)[0]) if "." in m.name else None
            heads = getattr(parent, "heads", None)
            if (isinstance(heads, int) and heads > 1 and m.kind == "out"
                    and m.name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")):
                found = heads
        return found if found == parts else 0

    def groups(self, root_types: tuple[type, ...]) -> tuple[list[ChannelGroup], dict[str, nn.Module]]:
        out: list[ChannelGroup] = []
        roots: dict[str, nn.Module] = {}
        modules = dict(self.model.named_modules())
        for tp_group in self.graph.get_all_groups(ignored_layers=self.ignored, root_module_types=root_types):
            first = self._members(tp_group)
            # Canonical root: the Conv/Linear producer with the fewest channels, earliest in module order.
            cands = [m for m in first if m.kind == "out" and isinstance(modules.get(m.name), root_types)
                     and modules.get(m.name) not in self.ignored]
            if not cands:
                continue
            cands.sort(key=lambda m: (len(m.idxs), self.order.get(m.name, 1 << 30)))
            root_name = cands[0].name
            root = modules[root_name]
            fused = self.fused.get(root_name)
            if fused is not None and {(m.name, m.kind) for m in first} == {(m.name, m.kind) for m in fused.members}:
                out.append(fused)
                roots[root_name] = root
                continue
            size = _layer_dim(root, "out")
            if root is tp_group[0].dep.target.module:
                members = first
            else:
                members = self._members(self.group_for(root, range(size)))
            members.sort(key=lambda m: (self.order.get(m.name, 1 << 30), m.name, m.kind))
            reasons = [_unsupported_reason(modules.get(m.name, None) if m.name in modules else _param(self.model, m.name),
                                           m.name, m.kind, m.idxs) for m in members]
            if root_name in self.fused:
                reasons.append(f"the fused qkv of {root_name.rsplit('.', 1)[0]!r} is coupled with layers other than "
                               "its proj")
            reasons = [r for r in reasons if r]
            parts, why = _partition_or_reason(self, members, size, reasons)
            if why:
                reasons.append(why)
            heads = self._heads(members, parts) if parts > 1 and not reasons else 0
            out.append(ChannelGroup(root_name, size, parts, tuple(members), "; ".join(dict.fromkeys(reasons)), heads))
            roots[root_name] = root
        out.sort(key=lambda g: self.order[g.key])
        return out, roots


def _partition_or_reason(tracer: _Tracer, members, size, reasons) -> tuple[int, str]:
    if reasons:
        return 1, ""
    return tracer._partitions(members, size)


def _param(model: nn.Module, name: str) -> Any:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None


def build_groups(model: nn.Module, example_inputs: ExampleInputs, ignored_layers: Iterable[str] | None = None,
                 root_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> DependencyGroups:
    """Trace ``model(*example_inputs)`` once and return its channel groups in a stable order.

    ``example_inputs``: a tuple of positional inputs or a mapping of keyword inputs (diffusers'
    ``{"sample": x, "timestep": t}``; see :mod:`.inputs`); batch 1 and a small resolution suffice,
    meta tensors work and cost nothing. ``ignored_layers``: module names whose output channels stay
    whole; ``None`` (default) means the output layer, found as the last Conv/Linear the forward runs
    (``conv_out`` of the U-Nets, ``final_layer.linear`` / ``proj_out_2`` of the DiTs). Names the model
    lacks raise :class:`PruningError`. The model is left in the training mode it had.
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"build_groups(model): expected an nn.Module, got {type(model).__name__}")
    ignored = None if ignored_layers is None else list(ignored_layers)
    example_inputs = check_inputs(example_inputs)
    tracer = _Tracer(model, example_inputs, ignored)
    groups, roots = tracer.groups(root_types)
    return DependencyGroups(groups, tracer, roots)
