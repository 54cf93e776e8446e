"""Mask arithmetic with exact counts: random masks, magnitude drop, score-based growth.

Selections sort with ``stable=True`` so that ties go to the lower flat index: the same scores give
the same mask on every rank and every run, without tie-breaking noise.
"""

from __future__ import annotations

import torch

__all__ = ["kept_count", "random_mask", "drop_smallest", "grow_largest"]


def kept_count(numel: int, density: float) -> int:
    """Weights a layer of ``numel`` keeps at ``density``: exactly round((1 - density) * numel) zeros."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density: expected a number in [0, 1], got {density!r}")
    return numel - int(round((1.0 - density) * numel))


def random_mask(shape: torch.Size | tuple[int, ...], n_keep: int, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Bool mask of ``shape`` with exactly ``n_keep`` True entries at uniformly random positions."""
    numel = int(torch.Size(shape).numel())
    if not 0 <= n_keep <= numel:
        raise ValueError(f"n_keep: expected 0 <= n_keep <= {numel}, got {n_keep}")
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=generator)[:n_keep]] = True
    return flat.view(shape).to(device) if device is not None else flat.view(shape)


def _top_by_sort(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """`_top` by a stable descending sort of every score (the definition; used when a score is NaN)."""
    s = scores.detach().flatten().to(torch.float64).clone()
    s[~allowed.flatten()] = -torch.inf
    out = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    out[torch.argsort(s, descending=True, stable=True)[:k]] = True
    return out


def _top(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Flat bool mask of the ``k`` allowed entries with the largest scores, ties to the lower index
    (``k`` <= the allowed count). Selected in linear time: the k-th largest allowed score, then every
    score above it and the lowest-index ties at it (a full sort was ~70% of a RigL update on the
    digits U-Net)."""
    allowed = allowed.flatten()
    flat = scores.detach().flatten()
    s = flat[allowed]
    if k == 0 or k == s.numel():
        return allowed.clone() if k else torch.zeros_like(allowed)
    if bool(s.isnan().any()):
        return _top_by_sort(scores, allowed, k)
    threshold = torch.kthvalue(s, s.numel() - k + 1).values  # the k-th largest
    above = (flat > threshold) & allowed
    ties = (flat == threshold) & allowed
    ties &= ties.cumsum(0) <= k - int(above.sum())  # the lowest-index ties fill the count
    return above | ties


def drop_smallest(mask: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """``mask`` without its ``k`` active entries of smallest ``scores`` (e.g. |W|)."""
    n_active = int(mask.sum())
    if not 0 <= k <= n_active:
        raise ValueError(f"k: expected 0 <= k <= {n_active} active weights, got {k}")
    return _top(scores, mask, n_active - k).view(mask.shape)


def grow_largest(mask: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` inactive entries of ``mask`` with the largest ``scores`` (e.g. |∇W|)."""
    n_inactive = mask.numel() - int(mask.sum())
    if not 0 <= k <= n_inactive:
        raise ValueError(f"k: expected 0 <= k <= {n_inactive} inactive weights, got {k}")
    return _top(scores, ~mask, k).view(mask.shape)
