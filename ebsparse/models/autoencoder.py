"""The first stage of latent diffusion: a convolutional autoencoder with a regularised latent space,
after the reference's ``VQModel`` / ``AutoencoderKL`` (CompVis latent-diffusion, ``ldm/models/autoencoder.py``).

Encoder and decoder are the reference's (the DDPM U-Net's blocks without time embedding or skips;
``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``z_channels``, ... keep its ``ddconfig``
names); the down-sampling factor is ``f = 2 ** (len(ch_mult) - 1)`` (``ch_mult [1, 2, 4]``: f = 4).
``regularizer``:

* ``vq``: ``quant_conv`` (1x1) to ``embed_dim`` channels, then a vector quantiser with ``n_embed``
  codes (nearest code, straight-through gradient, codebook + ``beta``-weighted commitment loss as the
  reference's ``VectorQuantizer2``), ``post_quant_conv`` back. As in the reference's LDM, the
  diffusion model works on the *pre-quantisation* latents (:meth:`Autoencoder.encode`) and
  :meth:`Autoencoder.decode` quantises them first.
* ``kl``: the encoder outputs a mean and log-variance (``double_z``); the latent is a sample
  (training) or the mean (:meth:`encode`, so a latent cache is deterministic); a KL term regularises.

Only the reconstruction objective is ours to choose (:mod:`ebsparse.diffusion.autoencoder_training`):
the reference adds LPIPS and a patch GAN, which need downloaded weights or long training; here it is
L1 or L2 alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._config import config_from_dict
from ..nn.activation import dropout_act
from ..nn.norm import norm_silu
from ..nn.thin_conv import thin_conv2d
from .ddpm_unet import AttnBlock, Downsample, Upsample

__all__ = ["AutoencoderConfig", "Autoencoder", "VectorQuantizer", "REGULARIZERS"]

REGULARIZERS = ("vq", "kl")


@dataclass
class AutoencoderConfig:
    """Everything needed to rebuild an :class:`Autoencoder`. Defaults: the reference's VQ-f4
    (``vq-f4``: ch 128, ch_mult [1, 2, 4], 2 res blocks, z 3, 8192 codes of dim 3).
    ``num_groups`` is ours (the reference fixes 32): tiny models use fewer."""

    regularizer: str = "vq"
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    z_channels: int = 3
    embed_dim: int = 3
    n_embed: int = 8192
    num_groups: int = 32

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"autoencoder.regularizer={self.regularizer!r}; expected one of {REGULARIZERS}")
        for name in ("in_channels", "out_ch", "resolution", "ch", "num_res_blocks", "z_channels", "embed_dim",
                     "n_embed", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"autoencoder.{name} must be a positive int, got {value!r}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"autoencoder.ch_mult must be a non-empty list of positive ints, got {list(self.ch_mult)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"autoencoder.dropout must be in [0, 1), got {self.dropout!r}")
        if self.resolution % self.factor:
            raise ValueError(f"autoencoder.resolution={self.resolution} must be divisible by the down-sampling factor "
                             f"{self.factor} (2 ** (len(ch_mult) - 1))")
        bad = sorted(w for w in {self.ch * m for m in self.ch_mult} | {self.ch} if w % self.num_groups)
        if bad:
            raise ValueError(f"autoencoder: widths {bad} (ch * ch_mult) are not divisible by num_groups="
                             f"{self.num_groups}; GroupNorm needs whole groups")

    @property
    def factor(self) -> int:
        """Down-sampling factor f: an S x S image has (S / f) x (S / f) latents."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "autoencoder") -> "AutoencoderConfig":
        return config_from_dict(cls, d, key)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """The DDPM residual block without a time embedding (the reference's ``temb_channels=0``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x))
        h = self.conv2(dropout_act(self.dropout, norm_silu(self.norm2, h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


def _mid(channels: int, cfg: AutoencoderConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg.dropout, cfg.num_groups)
    mid.attn_1 = AttnBlock(channels, cfg.num_groups)
    mid.block_2 = ResnetBlock(channels, channels, cfg.dropout, cfg.num_groups)
    return mid


class Encoder(nn.Module):
    """(B, in_channels, S, S) → (B, z_channels or 2 * z_channels with ``double_z``, S / f, S / f)."""

    def __init__(self, cfg: AutoencoderConfig, double_z: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = cfg.resolution, cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, cfg.ch * mult, cfg.dropout, cfg.num_groups))
                block_in = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, cfg.num_groups))
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(block_in, True)
                res //= 2
            self.down.append(stage)
        self.mid = _mid(block_in, cfg)
        self.norm_out = _norm(block_in, cfg.num_groups)
        self.conv_out = nn.Conv2d(block_in, (2 if double_z else 1) * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = thin_conv2d(self.conv_in, x)  # image channels in, latent channels out: thin convs
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return thin_conv2d(self.conv_out, norm_silu(self.norm_out, h))


class Decoder(nn.Module):
    """(B, z_channels, S / f, S / f) → (B, out_ch, S, S)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.factor
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, cfg)
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, cfg.ch * cfg.ch_mult[level], cfg.dropout, cfg.num_groups))
                block_in = cfg.ch * cfg.ch_mult[level]
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, cfg.num_groups))
            if level != 0:
                stage.upsample = Upsample(block_in, True)
                res *= 2
            self.up.insert(0, stage)
        self.norm_out = _norm(block_in, cfg.num_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(thin_conv2d(self.conv_in, z))))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return thin_conv2d(self.conv_out, norm_silu(self.norm_out, h))


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, embed_dim, H, W) latents with a straight-through gradient.

    ``forward(z) -> (z_q, loss, codes)``: ``loss = |sg(z_q) - z|^2 * beta + |z_q - sg(z)|^2`` (means;
    the reference's ``legacy`` weighting), ``codes`` (B, H, W) int64.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of every latent pixel: (B, C, H, W) → (B, H, W)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        w = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]
        return dist.argmin(1).reshape(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) codes → (B, embed_dim, H, W) code vectors."""
        return self.embedding(codes).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.codes(z)
        z_q = self.lookup(codes)
        loss = self.beta * F.mse_loss(z, z_q.detach()) + F.mse_loss(z_q, z.detach())
        return z + (z_q - z).detach(), loss, codes


class Autoencoder(nn.Module):
    """``encode(x)`` → the latents a diffusion model works on; ``decode(z)`` → images;
    ``forward(x)`` → (reconstruction, regularisation loss, pre-regularisation latents: :meth:`moments`)
    for training (:attr:`AutoencoderConfig.regularizer`)."""

    def __init__(self, config: AutoencoderConfig | None = None, beta: float = 0.25):
        super().__init__()
        self.config = cfg = config or AutoencoderConfig()
        kl = cfg.regularizer == "kl"
        self.encoder = Encoder(cfg, double_z=kl)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d((2 if kl else 1) * cfg.z_channels, (2 if kl else 1) * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        if not kl:
            self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta)

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"Autoencoder.{what} expects (B, {channels}, H, W), got {tuple(x.shape)}")

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-regularisation latents: (B, embed_dim, S/f, S/f) (``vq``) or mean and log-variance
        concatenated, (B, 2 * embed_dim, S/f, S/f) (``kl``)."""
        self._check(x, self.config.in_channels, "encode")
        f = self.config.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"Autoencoder.encode: image size {tuple(x.shape[-2:])} is not divisible by f={f}")
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_channels, S, S) in [-1, 1] → deterministic latents (B, embed_dim, S/f, S/f):
        pre-quantisation (``vq``, as the reference's LDM trains on) or the posterior mean (``kl``)."""
        h = self.moments(x)
        return h.chunk(2, dim=1)[0] if self.config.regularizer == "kl" else h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, embed_dim, h, w) → images (B, out_ch, h*f, w*f), roughly in [-1, 1]; ``vq``
        snaps each latent pixel to its nearest code first."""
        self._check(z, self.config.embed_dim, "decode")
        if self.config.regularizer == "vq":
            z = self.quantize.lookup(self.quantize.codes(z))
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.moments(x)
        if self.config.regularizer == "vq":
            z, reg, _ = self.quantize(h)
        else:
            mean, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            # KL to N(0, I), summed over a latent and averaged over the batch (the reference's kl())
            reg = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        return self.decoder(self.post_quant_conv(z)), reg, h
