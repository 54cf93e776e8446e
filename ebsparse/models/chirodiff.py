"""ChiroDiff (Das et al., 2023), the sparse-to-sparse paper's sketch model: a bidirectional GRU that
denoises a sequence of pen velocities.

Input ``x_t`` is (B, L, 3): noisy (dx, dy, pen) per point. The model sees each point's absolute
position (the cumulative sum of the velocities), the point itself and an 8-dim random-Fourier
embedding of the timestep: 2 + 3 + 8 = 13 features. A bidirectional GRU (H = 128, 3 layers) is
followed by Linear(2H -> H) and, with the time embedding again, Linear(H + 8 -> 3), which predicts
the noise. At the defaults this is 736,027 parameters, 95.5% of them in the GRU, the count the
sparse-to-sparse paper reports; the Fourier frequencies are a fixed buffer, not parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .._config import config_from_dict

__all__ = ["ChiroDiffConfig", "ChiroDiff"]


@dataclass
class ChiroDiffConfig:
    """Everything needed to rebuild a :class:`ChiroDiff`."""

    point_dim: int = 3
    hidden_size: int = 128
    num_layers: int = 3
    time_dim: int = 8
    fourier_scale: float = 16.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("point_dim", "hidden_size", "num_layers", "time_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ChiroDiffConfig.{name} must be a positive int, got {value!r}")
        if self.time_dim % 2:
            raise ValueError(f"ChiroDiffConfig.time_dim must be even (sin and cos pairs), got {self.time_dim}")
        if self.point_dim < 2:
            raise ValueError(f"ChiroDiffConfig.point_dim must be >= 2 (dx, dy, ...), got {self.point_dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "model") -> "ChiroDiffConfig":
        """Read the config at ``key``; wrong keys or types raise naming ``key.field``."""
        return config_from_dict(cls, d, key)


class RandomFourierTime(nn.Module):
    """t -> [sin(2π f t/T), cos(2π f t/T)] with fixed Gaussian frequencies f (a buffer)."""

    def __init__(self, dim: int, scale: float, seed: int, num_timesteps: int = 1000):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)
        self.num_timesteps = num_timesteps

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * (t.float() / self.num_timesteps)[:, None] * self.freqs[None]
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ChiroDiff(nn.Module):
    """``forward(x_t, t)``: x_t (B, L, point_dim) float, t (B,) long -> predicted noise (B, L, point_dim)."""

    def __init__(self, config: ChiroDiffConfig | None = None):
        super().__init__()
        self.config = config = config or ChiroDiffConfig()
        h = config.hidden_size
        self.time_embed = RandomFourierTime(config.time_dim, config.fourier_scale, config.seed)
        self.rnn = nn.GRU(2 + config.point_dim + config.time_dim, h, num_layers=config.num_layers,
                          bidirectional=True, batch_first=True)
        self.proj = nn.Linear(2 * h, h)
        self.act = nn.SiLU()
        self.out = nn.Linear(h + config.time_dim, config.point_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.point_dim:
            raise ValueError(f"x: expected (B, L, {self.config.point_dim}), got {tuple(x.shape)}")
        position = torch.cumsum(x[..., :2], dim=1)
        temb = self.time_embed(t)[:, None, :].expand(-1, x.shape[1], -1)
        hidden, _ = self.rnn(torch.cat([position, x, temb], dim=-1))
        return self.out(torch.cat([self.act(self.proj(hidden)), temb], dim=-1))
