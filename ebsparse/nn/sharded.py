"""Masks next to sharded weights (FSDP2 ``fully_shard``).

Under ``fully_shard`` a weight outside the forward is a DTensor holding one shard per rank, while its
bool mask stays an ordinary buffer with the whole tensor on every rank (buffers are not sharded).
Everything that combines the two — zeroing a weight outside its mask, masking its gradient or its
optimizer moments — goes through :func:`mask_like`; everything that *chooses* a mask reads whole
tensors through :func:`full`, so that every rank chooses from the same numbers.
"""

from __future__ import annotations

import torch

__all__ = ["is_sharded", "full", "mask_like"]


def is_sharded(t: torch.Tensor | None) -> bool:
    """Whether ``t`` is a DTensor (e.g. a parameter, gradient or Adam moment under FSDP2)."""
    if t is None or type(t) is torch.Tensor or type(t) is torch.nn.Parameter or not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``t`` itself, or a DTensor gathered from its shards (a collective: every
    rank must call it, in the same order)."""
    return t.full_tensor() if is_sharded(t) else t


def mask_like(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` (whole, the same on every rank) laid out like ``like``: itself for an ordinary tensor,
    for a DTensor this rank's part of it with ``like``'s mesh and placements. No communication: each
    rank cuts its own part, which is why the mask must be identical on every rank."""
    if not is_sharded(like):
        return mask
    from torch.distributed.tensor import distribute_tensor

    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(f"mask: expected the shape of the sharded tensor {tuple(like.shape)}, got {tuple(mask.shape)}")
    return distribute_tensor(mask.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
