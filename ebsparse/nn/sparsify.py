"""`sparsify(model, ...)`: swap nn.Linear / nn.Conv2d / nn.GRU for their sparse versions, on any model.

Works on third-party models (e.g. diffusers U-Nets and DiTs) because it only matches module types
and keeps parameter names, so existing state dicts still load. Subclasses that override `forward`
(e.g. LoRA-compatible layers) are left alone, since swapping them would drop their behaviour.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from ebsparse.formats.block import block_unsupported_reason
from ebsparse.nn.conv import SparseConv2d, conv_unsupported_reason
from ebsparse.nn.gru import SparseGRU
from ebsparse.nn.linear import SparseLinear
from ebsparse.nn.pattern import check_pattern_block

Selector = Callable[[str, nn.Module], bool] | str | list[str] | None


@dataclass
class SparsifyReport:
    """Which layers became sparse and which were skipped, with the reason."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"sparsified {len(self.converted)} layers, skipped {len(self.skipped)}"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


_SWAPPABLE = (nn.Linear, nn.Conv2d, nn.GRU)


def _unsupported_reason(module: nn.Module, pattern: str, block=None) -> str | None:
    if isinstance(module, (SparseLinear, SparseConv2d, SparseGRU)):
        return "already sparse"
    if isinstance(module, nn.GRU):
        if type(module) is not nn.GRU:
            return f"{type(module).__name__} subclasses nn.GRU"
        return None if pattern == "unstructured" else f"a GRU takes the unstructured pattern only, got {pattern!r}"
    base = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d
    if type(module).forward is not base.forward:
        return f"{type(module).__name__} overrides forward"
    if module.weight.numel() == 0:
        return f"an empty weight {tuple(module.weight.shape)}"
    if isinstance(module, nn.Conv2d):
        reason = conv_unsupported_reason(module)
        if reason:
            return reason
    if pattern == "2:4" and module.weight.shape[1] % 4:
        what = "in_features" if isinstance(module, nn.Linear) else "in_channels"
        return f"2:4 needs {what} % 4 == 0, got {module.weight.shape[1]}"
    if pattern == "block":
        return block_unsupported_reason(module.weight.shape, block)
    return None


def sparsify(model: nn.Module, *, density: float | Mapping[str, float] | None = None,
             pattern: str = "unstructured", masks: Mapping[str, torch.Tensor] | None = None,
             include: Selector = None, exclude: Selector = None, backend: str | None = None,
             strict: bool = False, block=None) -> SparsifyReport:
    """Replace matching nn.Linear / nn.Conv2d / nn.GRU modules of `model` in place.

    Args:
        density: kept fraction, one float for every layer or a mapping layer name -> density
            (layers missing from the mapping are left dense). For 2:4 it must be None or 0.5
            (a 2:4 pattern keeps half); any other value raises ValueError.
        pattern: "unstructured" (magnitude mask with exact counts), "2:4" or "block" (whole
            (bo, bi) blocks of the (out, in) channel plane, every conv tap alike; magnitude by block
            L2 norm, exactly round(density * n_blocks) blocks kept, at least one; layers whose
            channels the block does not divide are skipped with that reason).
        block: (bo, bi) for pattern="block" (one of `ebsparse.formats.SUPPORTED_BLOCKS`).
        masks: layer name -> bool mask, overriding `density` (e.g. from ER/ERK initialisation); for
            a GRU, parameter name ("<layer>.weight_hh_l0", ...) -> mask, its weights left out dense.
        include / exclude: layer-name globs (or a predicate (name, module) -> bool).
        backend: forwarded to the modules (None/"auto", or a backend name).
        strict: raise instead of skipping a selected layer that cannot be made sparse.
    """
    block = check_pattern_block(pattern, block)  # checked before any layer is swapped
    if pattern == "2:4":  # checked before any layer is swapped, so a bad call leaves the model as it was
        for value in (density.values() if isinstance(density, Mapping) else [density]):
            if value not in (None, 0.5):
                raise ValueError(f"density: a 2:4 pattern has density 0.5, got {value!r}")
    report = SparsifyReport()
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, _SWAPPABLE):
            continue
        if include is not None and not _matches(include, name, module):
            continue
        if exclude is not None and _matches(exclude, name, module):
            continue
        if isinstance(density, Mapping) and name not in density and not (masks and _masks_of(masks, name, module)):
            continue
        reason = _unsupported_reason(module, pattern, block)
        if reason:
            if strict:
                raise ValueError(f"layer {name!r} cannot be made sparse: {reason}")
            report.skipped[name] = reason
            continue
        targets.append((name, module))
    for name, module in targets:
        layer_density = density.get(name) if isinstance(density, Mapping) else density
        if isinstance(module, nn.GRU):
            gru_masks = _masks_of(masks, name, module) if masks else {}
            sparse = SparseGRU.from_dense(module, gru_masks or None, density=None if gru_masks else layer_density,
                                          backend=backend)
            _set_submodule(model, name, sparse)
            report.converted.append(name)
            continue
        mask = masks.get(name) if masks else None
        cls = SparseLinear if isinstance(module, nn.Linear) else SparseConv2d
        sparse = cls.from_dense(module, density=layer_density, pattern=pattern, mask=mask, backend=backend,
                                block=block)
        _set_submodule(model, name, sparse)
        report.converted.append(name)
    return report


def _masks_of(masks: Mapping[str, torch.Tensor], name: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A GRU's masks from `masks` keyed by parameter name ("<layer>.weight_hh_l0"), by weight name."""
    if not isinstance(module, nn.GRU):
        return {name: masks[name]} if name in masks else {}
    prefix = f"{name}." if name else ""
    return {k[len(prefix):]: m for k, m in masks.items() if k.startswith(prefix) and k[len(prefix):] in
            {n for n, _ in module.named_parameters() if n.startswith("weight_")}}


def densify(model: nn.Module) -> list[str]:
    """Turn every SparseLinear / SparseConv2d / SparseGRU of `model` back into a dense module (masked weights)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d, SparseGRU))]
    for name in names:
        _set_submodule(model, name, model.get_submodule(name).to_dense())
    return names


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
