"""Extension points of the training loop, so that algorithms (sparse-to-sparse training, Early-Bird
ticket tracking, timestep regions) ride on one :class:`~ebsparse.diffusion.trainer.Trainer` instead
of each forking it.

A plugin sees the trainer at fixed moments of a step and may keep state that the checkpoint saves,
so a resumed run continues exactly. Every method has a do-nothing default.

Order inside ``Trainer.train_step``::

    forward, loss.backward()
    plugin.after_backward(trainer)        -> False skips optimizer.step() (e.g. a RigL update step)
    clip, optimizer.step()
    plugin.after_optimizer_step(trainer)  (e.g. re-apply masks before the EMA sees the weights)
    ema.update(), step += 1
    plugin.after_step(trainer, stats)     (e.g. a ticket check at the end of a pseudo-epoch)

and in ``Trainer.fit``, after every step (and once when a resumed run starts)::

    plugin.should_stop(trainer)           -> True ends the run after a checkpoint (e.g. tickets found)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

__all__ = ["TrainerPlugin"]


class TrainerPlugin:
    """Base class; override what you need. ``name`` keys the plugin's state in checkpoints."""

    name: str = "plugin"

    def prepare_model(self, trainer: "Trainer", model: nn.Module) -> nn.Module:
        """Called once, before the EMA and the optimizer exist; may swap modules (e.g. sparsify)."""
        return model

    def attach(self, trainer: "Trainer") -> None:
        """Called once the model, EMA and optimizer exist (e.g. to hook the optimizer)."""

    def after_backward(self, trainer: "Trainer") -> bool:
        """Gradients are ready; return False to skip this step's optimizer update."""
        return True

    def after_optimizer_step(self, trainer: "Trainer") -> None:
        """The optimizer has stepped (or was skipped); the EMA has not yet been updated."""

    def after_step(self, trainer: "Trainer", stats: dict[str, float]) -> None:
        """The step is complete (``trainer.step`` already counts it); ``stats`` may be extended."""

    def should_stop(self, trainer: "Trainer") -> bool:
        """Return True to end ``Trainer.fit`` before ``training.steps``."""
        return False

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON-able metadata that a checkpoint must hold to resume exactly."""
        return {}, {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Inverse of :meth:`state_tensors`."""
