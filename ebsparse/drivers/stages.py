"""Configs of the training stages a driver runs one after another on the one training loop."""

from __future__ import annotations

import dataclasses

from ..diffusion.config import ExperimentConfig

__all__ = ["with_steps"]


def with_steps(config: ExperimentConfig, steps: int, seed_offset: int = 0, warmup: int | None = None,
               ckpt_every: int | None = None) -> ExperimentConfig:
    """A copy of ``config`` whose training runs ``steps`` steps, checkpointed every ``ckpt_every``
    (default ``training.ckpt_every``) and at the end, with no sample grids."""
    tc = dataclasses.replace(config.training, steps=max(int(steps), 1), sample_every=0,
                             seed=config.training.seed + seed_offset,
                             warmup=config.training.warmup if warmup is None else warmup,
                             ckpt_every=config.training.ckpt_every if ckpt_every is None else ckpt_every)
    return dataclasses.replace(config, training=tc)
