"""Sparse-to-sparse training inside :class:`ebsparse.diffusion.trainer.Trainer`, as a plugin.

The model is sparsified before the EMA and the optimizer exist, so both are built on the sparse
modules. On RigL/MagRan update steps the optimizer step is skipped (as RigL does), and the EMA
weights are re-masked so that they are exactly sparse whenever they are evaluated or saved (the live
weights are exact zeros outside the masks, so between updates the EMA stays sparse by itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ebsparse.diffusion.plugins import TrainerPlugin

from .config import SparsityConfig
from .sparsifier import Sparsifier, from_config

__all__ = ["SparsityPlugin"]


class SparsityPlugin(TrainerPlugin):
    """Runs a :class:`~ebsparse.s2s.Sparsifier` built from ``config`` on the trainer's model.

    A cosine-decayed prune fraction with no ``end_step`` decays over the whole run
    (``training.steps``).
    """

    name = "sparsity"

    def __init__(self, config: SparsityConfig):
        if not isinstance(config, SparsityConfig):
            raise TypeError(f"config: expected a SparsityConfig, got {type(config).__name__}")
        self.config = config
        self.sparsifier: Sparsifier | None = None

    def prepare_model(self, trainer, model: nn.Module) -> nn.Module:
        cfg = self.config
        if cfg.prune_fraction_decay == "cosine" and cfg.end_step is None:
            cfg = cfg.replace(end_step=trainer.config.training.steps)
        self.sparsifier = from_config(cfg)
        return self.sparsifier.apply(model)

    def attach(self, trainer) -> None:
        self.sparsifier.attach_optimizer(trainer.optimizer)
        self.sparsifier.mask_state(trainer.ema.shadow)

    def after_backward(self, trainer) -> bool:
        return self.sparsifier.step()

    def after_step(self, trainer, stats: dict[str, float]) -> None:
        if self.sparsifier.last_update.get("step") == self.sparsifier.steps:
            self.sparsifier.mask_state(trainer.ema.shadow)

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state = self.sparsifier.state_dict()
        generator = state.pop("generator")
        return {"generator": generator}, state

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.sparsifier.load_state_dict({**meta, "generator": tensors["generator"]})
