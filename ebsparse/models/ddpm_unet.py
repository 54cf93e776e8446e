"""The DDPM U-Net exactly as the DDIM code base builds it (the model behind the Early-Bird papers).

Module names follow that code base (``temb.dense``, ``conv_in``, ``down[i].block[j]``, ``mid.block_1``,
``up[i].attn[j]``, ``norm_out``, ``conv_out``, ...) so that its checkpoints load with ``load_state_dict``
and so that pruning code can address layers by the names the papers' tooling prints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._config import config_from_dict
from ..nn.fused import StackedConv2d, run_stacked
from ..nn.activation import dropout_act
from ..nn.norm import norm_silu
from ..nn.thin_conv import thin_conv2d
from ..nn.pixel_attention import pixel_attention, pixel_attention_stacked
from ..nn.upsample import upsample_nearest_2x

__all__ = ["DDPMUNetConfig", "DDPMUNet", "timestep_embedding"]


@dataclass
class DDPMUNetConfig:
    """Everything needed to rebuild a :class:`DDPMUNet` (``DDPMUNet(cfg)``).

    Defaults are the CIFAR-10 model of DDPM/DDIM. ``num_groups`` is 32 in every paper model; it is a
    field only so that tiny test models can use fewer channels.
    """

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 32
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    num_groups: int = 32

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the config cannot build a working U-Net."""
        for name in ("in_channels", "out_channels", "resolution", "ch", "num_res_blocks", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DDPMUNetConfig.{name} must be a positive int, got {value!r}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"DDPMUNetConfig.ch_mult must be a non-empty list of positive ints, got {self.ch_mult!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"DDPMUNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        downsamples = len(self.ch_mult) - 1
        if self.resolution % (2**downsamples) != 0:
            raise ValueError(
                f"DDPMUNetConfig.resolution={self.resolution} must be divisible by 2**(len(ch_mult)-1)="
                f"{2**downsamples} so that every down level halves it exactly"
            )
        widths = {self.ch * m for m in self.ch_mult} | {self.ch}
        bad = sorted(w for w in widths if w % self.num_groups)
        if bad:
            raise ValueError(
                f"DDPMUNetConfig: channel widths {bad} (ch * ch_mult) are not divisible by num_groups="
                f"{self.num_groups}; GroupNorm needs whole groups"
            )
        reachable = {self.resolution // 2**i for i in range(len(self.ch_mult))}
        missing = sorted(set(self.attn_resolutions) - reachable)
        if missing:
            raise ValueError(
                f"DDPMUNetConfig.attn_resolutions {missing} never occur; the U-Net runs at resolutions "
                f"{sorted(reachable, reverse=True)}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "model") -> "DDPMUNetConfig":
        """Read the config at ``key``; wrong keys or types raise naming ``key.field``."""
        return config_from_dict(cls, d, key)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the DDPM code (sin first, then cos; frequencies 10000^(-i/(half-1))).

    timesteps: (B,) int or float. Returns (B, dim) float32.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (batch,), got shape {tuple(timesteps.shape)}")
    half = dim // 2
    freq = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -freq)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def _swish(x: torch.Tensor) -> torch.Tensor:
    # x * sigmoid(x) as one fused kernel: the same function, half the memory traffic, which is
    # what limits the speed-up of a channel-pruned model (the memory-bound ops shrink only 2x).
    return F.silu(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest 2x then a 3x3 conv (``with_conv``), as in DDPM."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample_nearest_2x(x)  # F.interpolate(x, scale_factor=2.0, mode="nearest"), faster on the CPU
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Asymmetric pad (right/bottom) then a stride-2 3x3 conv, matching the TF original."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, 2)


class ResnetBlock(nn.Module):
    """norm1 → swish → conv1 → +temb_proj(swish(temb)) → norm2 → swish → dropout → conv2, + shortcut.

    Each norm → swish pair is one fused op on the CPU (`ebsparse.nn.norm.norm_silu`), and the
    dropout in training runs ebsparse's kernel there (`ebsparse.nn.activation.dropout_act`)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float, groups: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(dropout_act(self.dropout, norm_silu(self.norm2, h)))  # ATen's dropout is slow on the CPU
        # Decided by structure, not by widths: channel pruning may make the two widths equal
        # while the block still has (and needs) its 1x1 shortcut.
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1x1 q/k/v/proj_out; scale ``int(c) ** -0.5``.

    The scale reads the *current* width so that a channel-pruned block stays consistent with the
    reference implementation.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        #: ``q, k, v -> out`` over the pixels in raster order (one head): block-sparse attention
        #: (:func:`ebsparse.nn.use_block_sparse_attention`); None: the reference's dense attention
        self.block_sparse = None
        #: q, k, v as one sparse kernel call when all three are sparse layers of one kind
        #: (:mod:`ebsparse.nn.fused`: each keeps its own weight, mask and state-dict names);
        #: False: three calls
        self.fuse_qkv = True
        self._stacked_qkv = StackedConv2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        fast = self.block_sparse is None and not torch.compiler.is_compiling()
        qkv = run_stacked(self._stacked_qkv if self.fuse_qkv else None, (self.q, self.k, self.v), h, split=not fast)
        b, c, hh, ww = qkv[0].shape
        c //= 3 if len(qkv) == 1 else 1  # one stacked output: q, k, v of equal widths along the channels
        scale = int(c) ** (-0.5)
        if fast:  # the reference's products (below) with fewer passes over memory
            if len(qkv) == 1:
                h = pixel_attention_stacked(qkv[0].reshape(b, 3 * c, hh * ww), scale)
            else:
                h = pixel_attention(*(t.reshape(b, c, hh * ww) for t in qkv), scale)
            return x + self.proj_out(h.reshape(b, c, hh, ww))
        q, k, v = qkv
        if self.block_sparse is not None:
            tokens = [t.reshape(b, 1, c, hh * ww).transpose(-1, -2) for t in (q, k, v)]  # (b, 1, hw, c)
            out = self.block_sparse(*tokens, scale=scale)
            return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, hh, ww))
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # b, hw, c
        k = k.reshape(b, c, hh * ww)  # b, c, hw
        w = torch.bmm(q, k) * scale
        w = torch.softmax(w, dim=2)
        v = v.reshape(b, c, hh * ww)
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class DDPMUNet(nn.Module):
    """The DDPM/DDIM U-Net. ``forward(x, t)``: x (B, in_channels, R, R), t (B,) → (B, out_channels, R, R)."""

    def __init__(self, config: DDPMUNetConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = DDPMUNetConfig(**overrides)
        elif overrides:
            config = DDPMUNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        ch, g = config.ch, config.num_groups
        self.ch = ch
        self.temb_ch = 4 * ch
        self.num_resolutions = len(config.ch_mult)
        self.num_res_blocks = config.num_res_blocks

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, 1, 1)

        in_ch_mult = (1,) + tuple(config.ch_mult)
        curr_res = config.resolution
        block_in = ch
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * config.ch_mult[i_level]
            for _ in range(self.num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, self.temb_ch, config.dropout, g))
                block_in = block_out
                if curr_res in config.attn_resolutions:
                    attn.append(AttnBlock(block_in, g))
            level = nn.Module()
            level.block, level.attn = block, attn
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, config.resamp_with_conv)
                curr_res //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, self.temb_ch, config.dropout, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, self.temb_ch, config.dropout, g)

        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * config.ch_mult[i_level]
            skip_in = ch * config.ch_mult[i_level]
            for i_block in range(self.num_res_blocks + 1):
                if i_block == self.num_res_blocks:
                    skip_in = ch * in_ch_mult[i_level]
                block.append(ResnetBlock(block_in + skip_in, block_out, self.temb_ch, config.dropout, g))
                block_in = block_out
                if curr_res in config.attn_resolutions:
                    attn.append(AttnBlock(block_in, g))
            level = nn.Module()
            level.block, level.attn = block, attn
            if i_level != 0:
                level.upsample = Upsample(block_in, config.resamp_with_conv)
                curr_res *= 2
            self.up.insert(0, level)

        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] != x.shape[3]:
            raise ValueError(
                f"DDPMUNet expects x of shape (B, {cfg.in_channels}, R, R), got {tuple(x.shape)}"
            )
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"DDPMUNet expects t of shape ({x.shape[0]},), got {tuple(t.shape)}")

        temb = timestep_embedding(t, self.ch).to(x.dtype)
        temb = self.temb.dense[1](_swish(self.temb.dense[0](temb)))

        hs = [thin_conv2d(self.conv_in, x)]  # image channels in and out: thin convs (ebsparse.nn.thin_conv)
        for i_level in range(self.num_resolutions):
            level = self.down[i_level]
            for i_block in range(self.num_res_blocks):
                h = level.block[i_block](hs[-1], temb)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(level.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_1(h, temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)

        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = level.block[i_block](torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)

        return thin_conv2d(self.conv_out, norm_silu(self.norm_out, h))
