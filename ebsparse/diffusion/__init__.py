"""Diffusion machinery: the noise schedule, epsilon loss, DDIM/DDPM samplers, EMA, checkpoints and
the training loop. Samplers and losses see a model only as ``model_fn(x, t) -> eps``."""

from .ema import EMA
from .losses import ModelFn, epsilon_loss, sample_timesteps
from .samplers import SAMPLERS, ddim_sample, ddpm_sample, timestep_sequence
from .schedule import DiffusionConfig, NoiseSchedule

__all__ = [
    "EMA", "ModelFn", "epsilon_loss", "sample_timesteps", "SAMPLERS", "ddim_sample", "ddpm_sample",
    "timestep_sequence", "DiffusionConfig", "NoiseSchedule",
]
