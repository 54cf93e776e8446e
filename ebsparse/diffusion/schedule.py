"""The DDPM noise schedule and the closed forms derived from it (forward process, posterior).

Kept free of any model so that samplers, losses and pruning code can share it. Values are computed in
float64 and cast on use, as the reference code does with numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from .._config import config_from_dict

__all__ = ["DiffusionConfig", "NoiseSchedule", "make_betas"]

BETA_SCHEDULES = ("linear", "quad", "const")
VAR_TYPES = ("fixedlarge", "fixedsmall")
TIMESTEP_SAMPLING = ("antithetic", "uniform")


@dataclass
class DiffusionConfig:
    """Rebuilds a :class:`NoiseSchedule`. Defaults: DDPM's linear betas 1e-4 → 0.02 over T = 1000.

    ``var_type`` is the reverse-process variance of ancestral sampling: ``fixedlarge`` = beta_t,
    ``fixedsmall`` = the true posterior variance. ``loss_reduction`` ``sum`` sums the squared error
    over pixels and averages over the batch, as the DDIM code base does (its learning rates assume it).
    """

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000
    var_type: str = "fixedlarge"
    timestep_sampling: str = "antithetic"
    loss_reduction: str = "sum"

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"diffusion.beta_schedule={self.beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        if self.var_type not in VAR_TYPES:
            raise ValueError(f"diffusion.var_type={self.var_type!r}; expected one of {VAR_TYPES}")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(
                f"diffusion.timestep_sampling={self.timestep_sampling!r}; expected one of {TIMESTEP_SAMPLING}"
            )
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"diffusion.loss_reduction={self.loss_reduction!r}; expected 'sum' or 'mean'")
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 2:
            raise ValueError(f"diffusion.num_timesteps must be an int >= 2, got {self.num_timesteps!r}")
        self.beta_start, self.beta_end = float(self.beta_start), float(self.beta_end)
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                f"diffusion betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "diffusion") -> "DiffusionConfig":
        """Read the ``diffusion:`` section; wrong keys or types raise naming ``diffusion.<key>``."""
        return config_from_dict(cls, d, key)


def make_betas(schedule: str, beta_start: float, beta_end: float, num_timesteps: int) -> torch.Tensor:
    """Betas as in the DDIM code base's ``get_beta_schedule`` (float64, shape (T,))."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "quad":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if schedule == "const":
        return torch.full((num_timesteps,), beta_end, dtype=torch.float64)
    raise ValueError(f"make_betas(schedule={schedule!r}): expected one of {BETA_SCHEDULES}")


class NoiseSchedule:
    """Betas and derived quantities; all tensors are float64 of shape (T,).

    ``alpha_bar(t)`` accepts t = -1 and returns 1 there, which is how DDIM/DDPM samplers express
    "the clean image" as the step after t = 0.
    """

    def __init__(self, config: DiffusionConfig | None = None):
        self.config = config or DiffusionConfig()
        c = self.config
        self.num_timesteps = c.num_timesteps
        self.betas = make_betas(c.beta_schedule, c.beta_start, c.beta_end, c.num_timesteps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.alphas_cumprod_prev = prev
        self.posterior_variance = self.betas * (1.0 - prev) / (1.0 - self.alphas_cumprod)
        self._alpha_bar_ext = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t for integer t in [-1, T-1] (t = -1 gives 1.0); float64, same shape as t."""
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point:
            raise TypeError(f"alpha_bar(t): t must be an integer tensor, got {t.dtype}")
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"alpha_bar(t): t must lie in [-1, {self.num_timesteps - 1}], got {t.min()}..{t.max()}")
        return self._alpha_bar_ext.to(t.device)[t.long() + 1]

    def reverse_log_variance(self, t: torch.Tensor) -> torch.Tensor:
        """log of the ancestral-sampling variance at t under ``var_type`` (float64)."""
        if self.config.var_type == "fixedlarge":
            # DDPM uses posterior_variance[1] at t=0 so that the log stays finite
            var = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
        else:
            var = self.posterior_variance.clamp(min=1e-20)
        return var.log().to(t.device)[t.long()]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. x0, noise: (B, ...); t: (B,) int."""
        a = self.alpha_bar(t).to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise
