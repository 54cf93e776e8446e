"""Training objective: epsilon prediction with the reference code base's timestep sampling."""

from __future__ import annotations

from typing import Callable

import torch

from .schedule import NoiseSchedule

__all__ = ["ModelFn", "sample_timesteps", "epsilon_loss"]

#: A denoiser as the samplers and losses see it: (x_t (B, C, H, W), t (B,) int64) → epsilon.
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_timesteps(
    n: int, num_timesteps: int, *, antithetic: bool = True, low: int = 0, high: int | None = None,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
) -> torch.Tensor:
    """n timesteps in [low, high] (inclusive; default the whole range).

    Antithetic (the reference trainer): draw ``n//2 + 1`` values t, then ``cat([t, low + high - t])[:n]``,
    which halves the variance of the loss estimate across the timestep range.
    """
    high = num_timesteps - 1 if high is None else high
    if not 0 <= low <= high < num_timesteps:
        raise ValueError(f"sample_timesteps: need 0 <= low <= high < {num_timesteps}, got low={low}, high={high}")
    if n < 1:
        raise ValueError(f"sample_timesteps: n must be >= 1, got {n}")
    if not antithetic:
        return torch.randint(low, high + 1, (n,), generator=generator, device=device)
    t = torch.randint(low, high + 1, (n // 2 + 1,), generator=generator, device=device)
    return torch.cat([t, low + high - t])[:n]


def epsilon_loss(
    model_fn: ModelFn, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
    reduction: str = "sum",
) -> torch.Tensor:
    """||eps - model(x_t, t)||^2, summed over pixels (``sum``, reference) or averaged (``mean``), mean over batch."""
    if noise.shape != x0.shape:
        raise ValueError(f"epsilon_loss: noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    xt = schedule.q_sample(x0, t, noise)
    err = (noise - model_fn(xt, t)).square().flatten(1)
    if reduction == "sum":
        return err.sum(dim=1).mean(dim=0)
    if reduction == "mean":
        return err.mean()
    raise ValueError(f"epsilon_loss(reduction={reduction!r}): expected 'sum' or 'mean'")
