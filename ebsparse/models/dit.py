"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"): adaLN-Zero blocks, class labels.

Parameter names follow the public DiT code (``x_embedder.proj``, ``t_embedder.mlp``,
``y_embedder.embedding_table``, ``blocks[i].attn.qkv``, ``blocks[i].adaLN_modulation``,
``final_layer.linear``) so that its checkpoints load with ``load_state_dict``. DiT-XL/2 at 256x256
(latent 32x32x4, ``learn_sigma``) has 675.1M parameters as the DiT paper counts them, i.e. including
the fixed sin-cos position table (a ``requires_grad=False`` parameter, as in the original code).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._config import config_from_dict
from ..nn.adaln import fused_adaln, gated_add, gated_add_norm_modulate, norm_modulate
from ..nn.linear import mlp_gelu_tanh
from ..nn.thin_conv import thin_conv2d
from ..ops.qkv_attention import qkv_attention

__all__ = ["DiTConfig", "DiT", "DIT_SIZES", "dit_config"]

#: name -> (depth, hidden_size, num_heads), from the DiT paper's Table 1.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


@dataclass
class DiTConfig:
    """Everything needed to rebuild a :class:`DiT`. Defaults: DiT-XL/2 on 256x256 ImageNet latents."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        if self.input_size % self.patch_size:
            raise ValueError(
                f"DiTConfig.input_size={self.input_size} must be divisible by patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"DiTConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError(f"DiTConfig.hidden_size={self.hidden_size} must be divisible by 4 (2-D sin-cos table)")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"DiTConfig.class_dropout_prob must be in [0, 1), got {self.class_dropout_prob!r}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "model") -> "DiTConfig":
        """Read the config at ``key`` (``size`` picks a row of :data:`DIT_SIZES`); wrong keys or types
        raise naming ``key.field``."""
        if isinstance(d, Mapping) and "size" in d:
            d = dict(d)
            d = {**dit_config(d.pop("size"), d.pop("patch_size", 2)).to_dict(), **d}
        return config_from_dict(cls, d, key, extra_keys=("size",))


def dit_config(size: str, patch_size: int = 2, **overrides: Any) -> DiTConfig:
    """The config of a standard DiT: ``dit_config("XL", 2)`` is DiT-XL/2."""
    key = str(size).upper()
    if key not in DIT_SIZES:
        raise ValueError(f"dit_config(size={size!r}): expected one of {sorted(DIT_SIZES)}")
    if patch_size not in (2, 4, 8):
        raise ValueError(f"dit_config(patch_size={patch_size!r}): the standard DiTs use 2, 4 or 8")
    depth, hidden, heads = DIT_SIZES[key]
    return DiTConfig(**{"patch_size": patch_size, "depth": depth, "hidden_size": hidden, "num_heads": heads, **overrides})


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos table of MAE/DiT: (grid_size**2, embed_dim), half for each axis."""

    def one_axis(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(gh, gh)  # w first, as in the reference
    return np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens with one strided conv (``proj``). (B,C,H,W) → (B,N,D)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: elementwise ops keep their first input's layout, so a transposed view here would
        # carry the token-major layout through every residual add, and every LayerNorm (forward and
        # backward) would copy its input to contiguous.
        return thin_conv2d(self.proj, x).flatten(2).transpose(1, 2).contiguous()  # latent channels in: thin


class TimestepEmbedder(nn.Module):
    """256-d sinusoidal features (cos first, max period 10000) → MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra "null" row for classifier-free guidance label dropout."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` linear (timm layout)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        #: ``q, k, v -> out`` in place of dense attention: block-sparse attention
        #: (:func:`ebsparse.nn.use_block_sparse_attention`); None: dense (`qkv_attention`)
        self.block_sparse = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        if self.block_sparse is None:
            # Reads q, k, v in place from the fused projection and writes the (B, N, H * D) layout
            # proj reads: on the CPU the native kernel (no transposes, no cat in the backward), SDPA
            # on long sequences, other devices and under torch.compile.
            return self.proj(qkv_attention(qkv, self.num_heads))
        # Widths come from the layers, not from x: after channel pruning the residual width (x's)
        # and the attention's inner width (qkv rows / 3) differ.
        b, n, _ = x.shape
        inner = self.qkv.out_features // 3
        # unbind, not qkv[0], qkv[1], qkv[2]: its backward stacks the three gradients in one copy,
        # where each index's backward would fill a zero tensor of all of qkv and add them up.
        q, k, v = (t.transpose(1, 2) for t in qkv.reshape(b, n, 3, self.num_heads, inner // self.num_heads).unbind(2))
        return self.proj(self.block_sparse(q, k, v).transpose(1, 2).reshape(b, n, inner))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ATen's tanh-GELU is slow on the CPU; sparse layers on the native kernels fuse it (and the
        # whole MLP where both layers are sparse)
        return mlp_gelu_tanh(self.fc1, self.act, self.fc2, x)


class DiTBlock(nn.Module):
    """adaLN-Zero block: the conditioning regresses shift/scale/gate for attention and MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        # x + gate * f(modulate(norm(x), shift, scale)) twice; on the CPU the norm + modulate and the
        # gated add are one memory pass each way (ebsparse.nn.adaln), else ATen's ops as written.
        # The attention's gated add and norm2 are one op (a pass over the residual stream saved).
        fused = fused_adaln(x, self.norm1, self.norm2)
        attn = self.attn(norm_modulate(self.norm1, x, shift_msa, scale_msa, fused))
        x, h = gated_add_norm_modulate(x, gate_msa, attn, self.norm2, shift_mlp, scale_mlp, fused)
        return gated_add(x, gate_mlp, self.mlp(h), fused)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(norm_modulate(self.norm_final, x, shift, scale, fused_adaln(x, self.norm_final)))


class DiT(nn.Module):
    """Class-conditional DiT. ``forward(x, t, y)``: x (B, C, H, W), t (B,), y (B,) int → (B, C_out, H, W).

    With ``learn_sigma`` the output has ``2*C`` channels (epsilon, then the variance interpolation);
    :meth:`eps` returns only the epsilon half so that samplers can call it as a function of (x, t).
    """

    def __init__(self, config: DiTConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = DiTConfig(**overrides)
        elif overrides:
            config = DiTConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.y_embedder = LabelEmbedder(config.num_classes, config.hidden_size, config.class_dropout_prob)
        grid = config.input_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, config.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(config.hidden_size, config.num_heads, config.mlp_ratio) for _ in range(config.depth)]
        )
        self.final_layer = FinalLayer(config.hidden_size, config.patch_size, config.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, zeroed adaLN and output (the "Zero" of adaLN-Zero)."""
        if self.pos_embed.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        grid = self.config.input_size // self.config.patch_size
        table = sincos_pos_embed_2d(self.config.hidden_size, grid)
        self.pos_embed.data.copy_(torch.from_numpy(table).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        c, p = self.config.out_channels, self.config.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    #: the trainer and samplers pass class labels to models that say so
    class_conditional = True

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator`` draws the training-time label dropout (classifier-free guidance), so that a
        trainer that owns its RNG state resumes bit-identically; ``None`` uses the global RNG."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(
                f"DiT expects x of shape (B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}), got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(
                f"DiT expects t and y of shape ({x.shape[0]},), got {tuple(t.shape)} and {tuple(y.shape)}"
            )
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training, generator)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """The epsilon prediction only (first ``in_channels`` output channels)."""
        return self.forward(x, t, y, generator)[:, : self.config.in_channels]
