"""The latent-diffusion U-Net of Rombach et al. (CompVis ``openaimodel.UNetModel``), unconditional.

:class:`LDMUNetConfig` takes the reference's field names, so the ``unet_config.params`` block of a
latent-diffusion YAML is the ``model.unet`` section here (the sparse-to-sparse paper's CelebA-HQ /
LSUN-Bedrooms model: ``image_size 64, in/out_channels 3, model_channels 224, attention_resolutions
[8, 4, 2], num_res_blocks 2, channel_mult [1, 2, 3, 4], num_head_channels 32``). Module names follow
the reference too (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``;
``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection`` in a ResBlock, ``norm`` /
``qkv`` / ``proj_out`` in attention), so pruning and sparsity reports read like the reference's.

Differences from the reference, all shape-preserving: attention's 1x1 ``qkv`` and ``proj_out`` are
``nn.Conv2d`` (the reference uses 1-D convs over flattened pixels: the same weights with one extra
unit dimension), because the sparse modules and channel pruning handle 2-D convs; attention runs
through ``F.scaled_dot_product_attention`` (the same math as the reference's einsums). Conditioning
(class labels, cross-attention) and the reference's memory options (checkpointing, fp16 weights)
are not built: their keys are unknown keys here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._config import config_from_dict
from ..nn.activation import dropout_act
from ..nn.norm import norm_silu
from ..nn.thin_conv import thin_conv2d

__all__ = ["LDMUNetConfig", "LDMUNet", "LatentDiffusionConfig", "build_latent_unet", "ldm_timestep_embedding"]

#: GroupNorm groups of the reference's ``normalization`` (GroupNorm32)
REFERENCE_GROUPS = 32


@dataclass
class LDMUNetConfig:
    """Everything needed to rebuild an :class:`LDMUNet`; names and defaults as ``UNetModel``'s.

    ``attention_resolutions`` are down-sampling factors (1 = the input resolution, 2 = half, ...),
    as in the reference. Heads: ``num_head_channels`` (channels per head) wins when set, else
    ``num_heads``; one of them must be set. ``num_groups`` is ours (the reference fixes 32): it lets
    tiny test models have narrow layers.
    """

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 224
    out_channels: int = 3
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (8, 4, 2)
    dropout: float = 0.0
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    conv_resample: bool = True
    num_heads: int = -1
    num_head_channels: int = 32
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    num_groups: int = REFERENCE_GROUPS

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.num_heads_upsample == -1:
            self.num_heads_upsample = self.num_heads
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the config cannot build a working U-Net."""
        for name in ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LDMUNetConfig.{name} must be a positive int, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"LDMUNetConfig.channel_mult must be a non-empty list of positive ints, "
                             f"got {list(self.channel_mult)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LDMUNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("LDMUNetConfig: set num_heads or num_head_channels (both are -1)")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(f"LDMUNetConfig.image_size={self.image_size} must be divisible by {factor}: the "
                             f"U-Net halves it {len(self.channel_mult) - 1} times (channel_mult="
                             f"{list(self.channel_mult)})")
        reachable = [2**i for i in range(len(self.channel_mult))]
        missing = sorted(set(self.attention_resolutions) - set(reachable))
        if missing:
            raise ValueError(f"LDMUNetConfig.attention_resolutions {missing} never occur: they are down-sampling "
                             f"factors and the U-Net runs at factors {reachable}")
        widths = sorted({self.model_channels * m for m in self.channel_mult} | {self.model_channels})
        bad = [w for w in widths if w % self.num_groups]
        if bad:
            raise ValueError(f"LDMUNetConfig: widths {bad} (model_channels * channel_mult) are not divisible by "
                             f"num_groups={self.num_groups}; GroupNorm needs whole groups")
        for level, mult in enumerate(self.channel_mult):
            if 2**level in self.attention_resolutions:
                width = self.model_channels * mult
                self.heads(width)  # raises naming the head field when the width does not split

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Attention heads at a width of ``channels`` (the reference's rule)."""
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ValueError(f"LDMUNetConfig.num_head_channels={self.num_head_channels} does not divide the "
                                 f"attention width {channels}")
            return channels // self.num_head_channels
        heads = self.num_heads_upsample if upsample else self.num_heads
        if heads < 1 or channels % heads:
            field = "num_heads_upsample" if upsample else "num_heads"
            raise ValueError(f"LDMUNetConfig.{field}={heads} does not divide the attention width {channels}")
        return heads

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "model.unet") -> "LDMUNetConfig":
        """Read the config at ``key``; wrong keys or types raise naming ``key.field``."""
        return config_from_dict(cls, d, key)


def ldm_timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The reference's sinusoidal embedding: cos first, then sin; frequencies max_period^(-i/half).

    (The DDPM U-Net's embedding puts sin first and divides by half - 1.) timesteps: (B,) -> (B, dim).
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (batch,), got shape {tuple(timesteps.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _zero(module: nn.Module) -> nn.Module:
    # The reference zero-initialises every layer that writes into a residual stream (and the output
    # conv), so that a fresh U-Net is the identity on each block and predicts 0.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels)  # eps 1e-5, as the reference's GroupNorm32


class Downsample(nn.Module):
    """Stride-2 3x3 conv with symmetric padding (``op``), or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x, then (``use_conv``) a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class ResBlock(nn.Module):
    """norm → SiLU → conv, + the time embedding (added, or as scale and shift of the second norm),
    norm → SiLU → dropout → zero-initialised conv, + skip (identity or 1x1 conv). ``up``/``down``
    resample inside the block (the reference's ``resblock_updown``)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int, groups: int,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm
                                                             else out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels, groups), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = norm_silu(self.in_layers[0], x)
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = self.in_layers[2](h)
        emb_out = self.emb_layers(emb)[:, :, None, None]
        norm, drop, conv = self.out_layers[0], self.out_layers[2], self.out_layers[3]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = F.silu(norm(h) * (1 + scale) + shift)
        else:
            h = norm_silu(norm, h + emb_out)
        h = conv(dropout_act(drop, h))  # ATen's dropout is slow on the CPU
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels: norm → 1x1 ``qkv`` → attention → zero-initialised 1x1
    ``proj_out``, added to the input. ``new_order``: the reference's ``QKVAttention`` channel layout
    (q, k, v each a contiguous block of heads) instead of ``QKVAttentionLegacy`` (per head q, k, v)."""

    def __init__(self, channels: int, num_heads: int, groups: int, new_order: bool):
        super().__init__()
        self.num_heads, self.new_order = num_heads, new_order
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3 * c, hh * ww)
        heads = self.num_heads
        # Heads follow the *current* width, so a channel-pruned block (whole heads removed) stays consistent.
        width = qkv.shape[1] // (3 * heads)
        if self.new_order:
            q, k, v = (t.reshape(b, heads, width, -1) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b, heads, 3 * width, -1).split(width, dim=2)
        out = F.scaled_dot_product_attention(*(t.transpose(-1, -2) for t in (q, k, v)))  # (b, heads, hw, width)
        out = out.transpose(-1, -2).reshape(b, heads * width, hh, ww)
        return x + self.proj_out(out)


class TimestepBlock(nn.Sequential):
    """A sequence of layers where ResBlocks also take the time embedding (the reference's
    ``TimestepEmbedSequential``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else thin_conv2d(layer, x)  # the first: latents in
        return x


class LDMUNet(nn.Module):
    """``forward(x, t)``: latents x (B, in_channels, S, S), timesteps t (B,) → epsilon (B, out_channels, S, S)."""

    def __init__(self, config: LDMUNetConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = LDMUNetConfig(**overrides)
        elif overrides:
            config = LDMUNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = cfg = config
        mc, g = cfg.model_channels, cfg.num_groups
        emb = 4 * mc

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch_in, emb, cfg.dropout, ch_out, g, cfg.use_scale_shift_norm, **kw)

        def attn(ch: int, upsample: bool = False) -> AttentionBlock:
            return AttentionBlock(ch, cfg.heads(ch, upsample), g, cfg.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([TimestepBlock(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skips, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepBlock(*layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(TimestepBlock(down))
                skips.append(ch)
                ds *= 2
        self.middle_block = TimestepBlock(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch, upsample=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepBlock(*layers))
        self.out = nn.Sequential(_norm(ch, g), nn.SiLU(), _zero(nn.Conv2d(mc, cfg.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"LDMUNet expects x of shape (B, {cfg.in_channels}, S, S), got {tuple(x.shape)}")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"LDMUNet: latent size {tuple(x.shape[-2:])} must be divisible by {factor} (the U-Net "
                             f"halves it {len(cfg.channel_mult) - 1} times)")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"LDMUNet expects t of shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_embed(ldm_timestep_embedding(t, cfg.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return thin_conv2d(self.out[2], norm_silu(self.out[0], h))  # latent channels out: a thin conv


@dataclass
class LatentDiffusionConfig:
    """The ``model:`` section of ``type: ldm``: the U-Net (``unet``, :class:`LDMUNetConfig`'s fields)
    and the frozen autoencoder it runs in.

    ``autoencoder``: the folder ``ebsparse train-autoencoder`` wrote (``autoencoder.safetensors``),
    relative to the working directory. ``scale_factor``: latents are multiplied by it before the
    diffusion sees them and divided by it before decoding; null takes the autoencoder's own (1 / the
    standard deviation of its latents on its training data, the reference's ``scale_by_std``).
    """

    autoencoder: str | None = None
    unet: dict | None = None
    scale_factor: float | None = None

    def __post_init__(self) -> None:
        if not self.autoencoder:
            raise ValueError("model.autoencoder is required for model.type=ldm: the folder that "
                             "'ebsparse train-autoencoder CONFIG' writes (e.g. runs/digits_vq)")
        if self.scale_factor is not None and not self.scale_factor > 0:
            raise ValueError(f"model.scale_factor must be > 0 (or null: the autoencoder's), got {self.scale_factor}")
        self.unet_config = LDMUNetConfig.from_dict(self.unet or {}, "model.unet")
        self.unet = self.unet_config.to_dict()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "model") -> "LatentDiffusionConfig":
        return config_from_dict(cls, d, key)


def build_latent_unet(config: LatentDiffusionConfig) -> LDMUNet:
    """The trainable part of a latent diffusion model: its U-Net (the autoencoder stays frozen and
    outside the model; :mod:`ebsparse.diffusion.latents` loads it)."""
    return LDMUNet(config.unet_config)
