"""Masks with exact kept counts: a layer at density d keeps exactly round(d * n) weights."""

from __future__ import annotations

import math

import torch


def check_density(density: float, name: str = "density") -> float:
    """Return `density` as a float, or raise naming the argument when it is not in [0, 1]."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number in [0, 1], got {density!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name}: expected a value in [0, 1], got {density!r}")
    return value


def exact_kept_count(numel: int, density: float) -> int:
    """round(density * numel), the number of weights a layer of this density keeps."""
    return int(round(check_density(density) * numel))


def _mask_from_order(order: torch.Tensor, shape: torch.Size, kept: int) -> torch.Tensor:
    mask = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
    mask[order[:kept]] = True
    return mask.view(shape)


def random_mask(shape, density: float, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Uniformly random bool mask with exactly round(density * numel) True entries."""
    shape = torch.Size(shape)
    kept = exact_kept_count(shape.numel(), density)
    order = torch.randperm(shape.numel(), generator=generator, device="cpu")
    return _mask_from_order(order, shape, kept).to(device if device is not None else "cpu")


def magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density * numel) largest |weight| entries (ties: the lower flat index)."""
    kept = exact_kept_count(weight.numel(), density)
    flat = weight.detach().abs().flatten().float()
    # A stable sort makes the tie-break deterministic, so every rank computes the same mask.
    order = torch.sort(flat, descending=True, stable=True).indices
    return _mask_from_order(order, weight.shape, kept)
