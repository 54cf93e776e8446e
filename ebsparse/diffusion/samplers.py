"""DDIM (with eta) and DDPM ancestral samplers, following the DDIM code base step for step.

A sampler only sees ``model_fn(x, t) -> eps`` (see :data:`ModelFn`), so a set of timestep-routed
models, a class-conditional model with its label bound, or a guided model can stand in for one model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .losses import ModelFn
from .schedule import NoiseSchedule

__all__ = ["timestep_sequence", "ddim_sample", "ddpm_sample", "SAMPLERS", "describe_sampler"]


def timestep_sequence(num_timesteps: int, timesteps: int, skip_type: str = "uniform") -> list[int]:
    """The increasing list of timesteps a sampler visits.

    ``uniform``: ``range(0, T, T // timesteps)``; ``quad``: ``int(linspace(0, sqrt(0.8 T), timesteps)**2)``
    (so the largest visited t is 0.8 T, as in the reference code).
    """
    if not isinstance(timesteps, int) or not 1 <= timesteps <= num_timesteps:
        raise ValueError(f"timesteps must be an int in [1, {num_timesteps}], got {timesteps!r}")
    if skip_type == "uniform":
        return list(range(0, num_timesteps, num_timesteps // timesteps))
    if skip_type == "quad":
        seq = np.linspace(0, np.sqrt(num_timesteps * 0.8), timesteps) ** 2
        return [int(s) for s in seq]
    raise ValueError(f"skip_type={skip_type!r}; expected 'uniform' or 'quad'")


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on the generator's device (a CPU generator keeps GPU runs reproducible), then moved."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _steps(seq: list[int]):
    nxt = [-1] + seq[:-1]
    return list(zip(reversed(seq), reversed(nxt), strict=True))


def _step_alpha_bars(schedule: NoiseSchedule, x: torch.Tensor, i: int, j: int):
    """The batch's timestep tensor t = i, and alpha_bar at steps i and j shaped to broadcast over x."""
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    shape = (-1, *([1] * (x.ndim - 1)))
    at = schedule.alpha_bar(t).to(x.dtype).view(shape)
    at_j = schedule.alpha_bar(torch.full_like(t, j)).to(x.dtype).view(shape)
    return t, at, at_j


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, timesteps: int = 100,
    skip_type: str = "uniform", eta: float = 0.0, generator: torch.Generator | None = None,
    seq: list[int] | None = None, progress: Callable | None = None,
) -> torch.Tensor:
    """DDIM's generalized steps. x_T: (B, ...) standard normal (images, latents, sequences). Returns
    x_0 (unclipped).

    With ``eta = 0`` the map x_T → x_0 is deterministic; ``eta = 1`` is DDPM-like ancestral noise.
    """
    if eta < 0:
        raise ValueError(f"ddim_sample: eta must be >= 0, got {eta}")
    seq = seq if seq is not None else timestep_sequence(schedule.num_timesteps, timesteps, skip_type)
    x = x_T
    steps = _steps(seq)
    for i, j in (progress(steps) if progress else steps):
        t, at, at_next = _step_alpha_bars(schedule, x, i, j)
        et = model_fn(x, t)
        x0 = (x - et * (1 - at).sqrt()) / at.sqrt()
        c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
        c2 = ((1 - at_next) - c1**2).sqrt()
        noise = _randn_like(x, generator) if eta > 0 else 0.0
        x = at_next.sqrt() * x0 + c1 * noise + c2 * et
    return x


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, timesteps: int | None = None,
    skip_type: str = "uniform", generator: torch.Generator | None = None, seq: list[int] | None = None,
    progress: Callable | None = None, clip_denoised: bool = True, **_: object,
) -> torch.Tensor:
    """Ancestral sampling (DDPM), optionally on a strided sequence. x_0 predictions are clipped to
    [-1, 1] when ``clip_denoised`` (images; not latents or stroke sequences); variance per ``schedule.config.var_type`` (``fixedlarge`` = beta of the step,
    ``fixedsmall`` = the posterior variance of the step)."""
    timesteps = schedule.num_timesteps if timesteps is None else timesteps
    seq = seq if seq is not None else timestep_sequence(schedule.num_timesteps, timesteps, skip_type)
    x = x_T
    steps = _steps(seq)
    for i, j in (progress(steps) if progress else steps):
        t, at, atm1 = _step_alpha_bars(schedule, x, i, j)
        beta_t = 1 - at / atm1
        e = model_fn(x, t)
        x0 = (1 / at).sqrt() * x - (1 / at - 1).sqrt() * e
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = (atm1.sqrt() * beta_t * x0 + (1 - beta_t).sqrt() * (1 - atm1) * x) / (1.0 - at)
        if i == 0:
            x = mean
            continue
        if schedule.config.var_type == "fixedlarge":
            var = beta_t
        else:
            var = beta_t * (1 - atm1) / (1 - at)
        noise = _randn_like(x, generator)
        x = mean + var.sqrt() * noise
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": ddim_sample, "ddpm": ddpm_sample}


def describe_sampler(cfg) -> str:
    """The sampler as it ran, in words (e.g. 'ddim, 50 of 1000 timesteps, eta 0')."""
    sc, total = cfg.sampling, cfg.diffusion.num_timesteps
    if sc.sampler == "ddpm":
        return (f"ddpm, ancestral steps on {sc.timesteps} of {total} timesteps ({sc.skip_type}"
                f"{'' if sc.timesteps == total else ', strided'})")
    return f"ddim, {sc.timesteps} of {total} timesteps ({sc.skip_type}), eta {sc.eta:g}"
