"""The weights a sparsifier owns, behind one interface whatever module holds them.

Plain ``nn.Linear`` / ``nn.Conv2d`` / ``nn.GRU`` become ``SparseLinear`` / ``SparseConv2d`` /
``SparseGRU`` so the sparse kernels run them. Weights no kernel can run (``nn.LSTM``/``nn.RNN``
weights, grouped convolutions, ``nn.MultiheadAttention`` projections, which bypass their
``out_proj.forward``) are masked in place:
a bool buffer next to the weight and a gradient hook. ``torch.nn.utils.parametrize`` is avoided on
purpose: on RNN weights it silently stops them from training (pytorch#65688).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ebsparse.nn import SparseConv2d, SparseGRU, SparseLinear, sparsify
from ebsparse.nn.sharded import is_sharded, mask_like

__all__ = ["Candidate", "Target", "ModuleTarget", "GRUTarget", "InPlaceTarget", "find_candidates", "build_targets"]


@dataclass
class Candidate:
    """A weight that will be sparsified: ``name`` is its qualified parameter name."""

    name: str
    kind: str  # "conv", "linear" or "rnn"
    module_name: str
    attr: str
    shape: tuple[int, ...]


class Target:
    """A sparsified weight and its bool mask (same shape)."""

    name: str
    kind: str

    @property
    def weight(self) -> nn.Parameter:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def mask(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def set_mask(self, mask: torch.Tensor) -> None:
        """Install ``mask`` in place (so checkpoints and kernel indices follow) and zero the rest."""
        raise NotImplementedError  # pragma: no cover

    def set_dense_grad(self, flag: bool) -> None:
        """Ask for the full dense gradient of the next backward (RigL update steps)."""
        raise NotImplementedError  # pragma: no cover

    def reapply(self) -> None:
        """Zero the weight outside the mask (after an optimizer step)."""
        with torch.no_grad():
            self.weight.mul_(mask_like(self.mask, self.weight))

    def mask_sharded_grad(self) -> None:
        """Keep the gradient at kept positions only, where the backward could not (see subclasses)."""

    @property
    def density(self) -> float:
        return float(self.mask.sum()) / self.mask.numel()


class ModuleTarget(Target):
    """The weight of a SparseLinear / SparseConv2d: the kernel computes grad-weight only at kept
    positions unless ``dense_weight_grad`` is set."""

    def __init__(self, name: str, kind: str, module: SparseLinear | SparseConv2d):
        self.name, self.kind, self.module = name, kind, module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def mask(self) -> torch.Tensor:
        return self.module.mask

    def set_mask(self, mask: torch.Tensor) -> None:
        self.module.set_mask(mask)

    def set_dense_grad(self, flag: bool) -> None:
        self.module.dense_weight_grad = bool(flag)


class GRUTarget(Target):
    """One weight of a SparseGRU (``weight_hh_l0`` ...): its mask is the module's ``<attr>_mask``
    buffer (the name an in-place mask had, so checkpoints load either way); the kernels compute
    its gradient at kept positions only unless the module's ``dense_weight_grad`` is set."""

    def __init__(self, name: str, kind: str, module: SparseGRU, attr: str):
        self.name, self.kind, self.module, self.attr = name, kind, module, attr

    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.module, self.attr)

    @property
    def mask(self) -> torch.Tensor:
        return self.module.mask_of(self.attr)

    def set_mask(self, mask: torch.Tensor) -> None:
        self.module.set_mask(self.attr, mask)

    def set_dense_grad(self, flag: bool) -> None:
        self.module.dense_weight_grad = bool(flag)  # one flag per module: every weight's target sets it alike


class InPlaceTarget(Target):
    """A weight masked in place: buffer ``<attr>_mask`` on the owning module, and a gradient hook
    that keeps the gradient at kept positions only (all of it when the dense gradient is asked for).
    The hook looks the mask up on the module at call time, so ``.to(device)`` cannot stale it."""

    def __init__(self, name: str, kind: str, module: nn.Module, attr: str, mask: torch.Tensor):
        self.name, self.kind, self.module, self.attr = name, kind, module, attr
        self.mask_attr = f"{attr}_mask"
        self.dense_grad = False
        if self.mask_attr not in module._buffers:
            module.register_buffer(self.mask_attr, torch.ones_like(self.weight, dtype=torch.bool))
        self.set_mask(mask)
        self._hook = self.weight.register_hook(self._mask_grad)

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self.dense_grad else grad * self.mask

    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.module, self.attr)

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, self.mask_attr)

    def set_mask(self, mask: torch.Tensor) -> None:
        with torch.no_grad():
            self.mask.copy_(mask)
            self.weight.mul_(mask_like(self.mask, self.weight))

    def set_dense_grad(self, flag: bool) -> None:
        self.dense_grad = bool(flag)

    @torch.no_grad()
    def mask_sharded_grad(self) -> None:
        """Under FSDP2 the parameter the hook was registered on is replaced by a sharded one, and the
        gradient reaches it through a reduce-scatter that runs no hooks: mask it here instead."""
        grad = self.weight.grad
        if is_sharded(self.weight) and grad is not None and not self.dense_grad:
            grad.mul_(mask_like(self.mask, grad))


def _excluded(name: str, module_name: str, exclude: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(module_name, p) for p in exclude)


def find_candidates(model: nn.Module, layers: Iterable[str], exclude: Iterable[str] = ()) -> list[Candidate]:
    """The weights of ``model`` of the given kinds ("conv", "linear", "rnn"), minus ``exclude`` globs
    (matched against the parameter and the module name). Frozen weights are left alone."""
    layers, exclude = set(layers), tuple(exclude)
    names = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_parameters()]
    unmatched = [p for p in exclude if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:  # a typo would leave the layer it meant sparse
        raise ValueError(f"sparsity.exclude: {unmatched} match no module or parameter name of the model")
    found: list[Candidate] = []
    for module_name, module in model.named_modules():
        attrs: list[tuple[str, str]] = []
        if isinstance(module, nn.modules.conv._ConvNd) and "conv" in layers:
            attrs = [("weight", "conv")]
        elif isinstance(module, nn.Linear) and "linear" in layers:
            attrs = [("weight", "linear")]
        elif isinstance(module, nn.RNNBase) and "rnn" in layers:
            # every weight of every layer and direction (weight_ih_l0, weight_hh_l0_reverse, ...)
            attrs = [(a, "rnn") for a in module._flat_weights_names if a.startswith("weight_")]
        elif isinstance(module, nn.MultiheadAttention) and "linear" in layers:
            attrs = [(a, "linear") for a, p in module.named_parameters(recurse=False)
                     if a.endswith("proj_weight") and p is not None]
        for attr, kind in attrs:
            p = getattr(module, attr, None)
            if not isinstance(p, nn.Parameter) or not p.requires_grad or p.dim() < 2:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            if _excluded(name, module_name, exclude):
                continue
            found.append(Candidate(name, kind, module_name, attr, tuple(p.shape)))
    return found


def _swappable(model: nn.Module, c: Candidate) -> bool:
    if c.attr != "weight" or type(model.get_submodule(c.module_name)) not in (nn.Linear, nn.Conv2d):
        return False
    parent_name = c.module_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if c.module_name else None
    return not isinstance(parent, nn.MultiheadAttention)  # MHA reads out_proj.weight directly


def swappable(model: nn.Module, c: Candidate) -> bool:
    """Whether the candidate's module becomes a SparseLinear / SparseConv2d (else masked in place)."""
    return bool(c.module_name) and _swappable(model, c)


def gru_swappable(model: nn.Module, c: Candidate) -> bool:
    """Whether the candidate's module is a plain nn.GRU that becomes a SparseGRU."""
    return bool(c.module_name) and c.kind == "rnn" and type(model.get_submodule(c.module_name)) is nn.GRU


def _swap_grus(model: nn.Module, candidates: list[Candidate], masks: dict[str, torch.Tensor], backend: str | None,
               rebound: dict[nn.Parameter, nn.Parameter]) -> set[str]:
    """Replace each nn.GRU holding candidates by a SparseGRU with their masks (its other weights
    stay dense); returns the swapped module names and fills ``rebound`` (old -> new parameters)."""
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    for c in candidates:
        if gru_swappable(model, c):
            per_module.setdefault(c.module_name, {})[c.attr] = masks[c.name]
    for module_name, module_masks in per_module.items():
        gru = model.get_submodule(module_name)
        sparse = SparseGRU.from_dense(gru, module_masks, backend=backend)
        for attr, p in gru.named_parameters():
            rebound[p] = getattr(sparse, attr)
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
    return set(per_module)


def build_targets(model: nn.Module, candidates: list[Candidate], masks: dict[str, torch.Tensor],
                  backend: str | None = None, blocks: dict[str, tuple[int, int]] | None = None
                  ) -> tuple[list[Target], dict[nn.Parameter, nn.Parameter]]:
    """Install ``masks`` (parameter name -> bool mask): swap what the kernels can run, mask the rest
    in place. ``blocks``: parameter name -> (bo, bi) for the swappable weights whose masks are block
    patterns (their modules get the "block" pattern). Returns the targets and old -> new parameters
    (the swap makes new ones)."""
    blocks = blocks or {}
    swap = {c.module_name: c for c in candidates if swappable(model, c)}
    old = {}
    for module_name in swap:
        m = model.get_submodule(module_name)
        old[module_name] = (m.weight, m.bias)
    converted = set()
    groups: dict[tuple | None, list[str]] = {}
    for n, c in swap.items():
        groups.setdefault(blocks.get(c.name), []).append(n)
    for block, names in groups.items():
        chosen = set(names)
        report = sparsify(model, masks={n: masks[swap[n].name] for n in names},
                          include=lambda n, m, chosen=chosen: n in chosen, backend=backend,
                          pattern="block" if block else "unstructured", block=block, strict=block is not None)
        converted |= set(report.converted)
    rebound: dict[nn.Parameter, nn.Parameter] = {}
    grus = _swap_grus(model, candidates, masks, backend, rebound)
    targets: list[Target] = []
    for c in candidates:
        module = model.get_submodule(c.module_name)
        if c.module_name in grus:
            targets.append(GRUTarget(c.name, c.kind, module, c.attr))
        elif c.module_name in converted:
            targets.append(ModuleTarget(c.name, c.kind, module))
            for before, after in zip(old[c.module_name], (module.weight, module.bias)):
                if before is not None:
                    rebound[before] = after
        else:
            targets.append(InPlaceTarget(c.name, c.kind, module, c.attr, masks[c.name]))
    return targets, rebound
