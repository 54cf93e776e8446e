"""Exponential moving average of parameters (DDIM code base's EMAHelper semantics)."""

from __future__ import annotations

import weakref

import torch
from torch import nn

__all__ = ["EMA"]


def _unchanged(seen: tuple | None, buffer: torch.Tensor | None) -> bool:
    """Whether `buffer` is the tensor object `seen` recorded, at the same version (contents not read;
    inference tensors have no version counter and count as changed)."""
    return (seen is not None and buffer is not None and seen[0]() is buffer and not buffer.is_inference()
            and seen[1] == buffer._version)


class EMA:
    """shadow ← rate · shadow + (1 − rate) · param, for every trainable parameter, after each step.

    Buffers are copied, not averaged. ``state_dict()`` holds plain tensors keyed like the model's
    state dict, so the EMA weights load straight into a fresh model.
    """

    def __init__(self, model: nn.Module, rate: float = 0.9999):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }
        self._trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        # (weak reference, version) of each bool buffer (a sparse layer's mask, 1 byte per weight) when
        # last copied: one that has not changed since is not copied again. Masks change through their
        # version counter (ebsparse.nn.mask_state); other buffers may not (BatchNorm's running
        # statistics are updated inside its kernel without a version bump), so they are always copied.
        self._copied: dict[str, tuple] = {}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        buffers = dict(model.named_buffers())
        for name, value in model.state_dict().items():
            if name in self._trainable:
                self.shadow[name].mul_(self.rate).add_(value.detach(), alpha=1.0 - self.rate)
                continue
            buffer = buffers.get(name)
            if value.dtype != torch.bool or not _unchanged(self._copied.get(name), buffer):
                self.shadow[name].copy_(value)
                if value.dtype == torch.bool and buffer is not None and not buffer.is_inference():
                    self._copied[name] = (weakref.ref(buffer), buffer._version)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (strict: same architecture)."""
        model.load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA.load_state_dict: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)
        self._copied.clear()
