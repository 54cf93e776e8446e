"""Attribute repairs after a physical shrink, for modules that cache their widths.

torch-pruning resizes weights and the standard width attributes (``in_channels``, ``out_features``,
``num_channels``); some modules keep their own copies that their ``forward`` checks or uses. The
reference code bases hit exactly these on ``diffusers`` models (stale ``channels`` of
Downsample2D/Upsample2D). Each rule is keyed by class name so that this module imports no model code.

Attention scale: the DDIM reference (and the ebsparse U-Net's ``AttnBlock``) computes it from the
*current* width, ``int(c) ** -0.5``; diffusers' default SDPA processor does the same implicitly
(``1/sqrt(head_dim)`` of the tensors), but its classic processors read the cached ``Attention.scale``,
so that is reset to the new head size and both processors agree. ``ResnetBlock.in_channels/out_channels`` of
the ebsparse U-Net are set to the new widths (its ``forward`` asks the structure, not the widths, whether
there is a shortcut conv); ebsparse DiT's fixed ``pos_embed`` loses the pruned hidden channels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["apply_fixups"]

#: (member name, kind) -> pruned channel indices of that layer, as the shrink step removed them.
Pruned = dict[tuple[str, str], list[int]]


def _resample(name: str, m: nn.Module, pruned: Pruned) -> None:
    conv = getattr(m, "conv", None) or getattr(m, "Conv2d_0", None)
    if isinstance(conv, nn.modules.conv._ConvNd):
        m.channels = conv.in_channels
        m.out_channels = conv.out_channels


def _resnet(name: str, m: nn.Module, pruned: Pruned) -> None:
    m.in_channels = m.conv1.in_channels
    m.out_channels = m.conv2.out_channels


def _heads_left(heads: int, width_now: int, gone: list[int] | None) -> int:
    """Heads that keep channels, from the inner width's removed indices (head h owns the channels
    ``h * d .. (h + 1) * d - 1`` of the unpruned width)."""
    if not gone or heads <= 1:
        return heads
    d = (width_now + len(gone)) // heads
    removed = [0] * heads
    for i in set(gone):
        removed[i // d] += 1
    return sum(1 for r in removed if r < d)


def _attention(name: str, m: nn.Module, pruned: Pruned) -> None:
    if isinstance(getattr(m, "to_q", None), nn.Linear):
        if isinstance(getattr(m, "heads", None), int):
            m.heads = _heads_left(m.heads, m.to_q.out_features, pruned.get((f"{name}.to_q", "out")))
        m.inner_dim = m.to_q.out_features
        m.query_dim = m.to_q.in_features
        if hasattr(m, "inner_kv_dim"):
            m.inner_kv_dim = m.to_k.out_features
        if isinstance(getattr(m, "to_out", None), nn.ModuleList) and isinstance(m.to_out[0], nn.Linear):
            m.out_dim = m.to_out[0].out_features
        if getattr(m, "scale_qk", False) and isinstance(getattr(m, "heads", None), int):
            m.scale = (m.inner_dim // m.heads) ** -0.5


def _patch_embed(name: str, m: nn.Module, pruned: Pruned) -> None:
    gone = pruned.get((f"{name}.proj" if name else "proj", "out"))
    pos = getattr(m, "pos_embed", None)
    if gone and isinstance(pos, torch.Tensor) and not isinstance(pos, nn.Parameter):
        keep = sorted(set(range(pos.shape[-1])) - set(gone))
        m.pos_embed = pos[..., keep].contiguous()


def _our_dit(name: str, m: nn.Module, pruned: Pruned) -> None:
    """ebsparse DiT adds a fixed (non-trainable) sin-cos ``pos_embed`` to the patch embedding."""
    prefix = f"{name}." if name else ""
    gone = pruned.get((f"{prefix}x_embedder.proj", "out"))
    pos = getattr(m, "pos_embed", None)
    if gone and isinstance(pos, torch.Tensor):
        keep = sorted(set(range(pos.shape[-1])) - set(gone))
        m.pos_embed = nn.Parameter(pos.detach()[..., keep].contiguous(), requires_grad=pos.requires_grad)


def _our_attention(name: str, m: nn.Module, pruned: Pruned) -> None:
    """ebsparse DiT attention: whole heads removed lower ``num_heads``; the head width is the kept
    inner width over it (SDPA's scale follows the tensors' head width)."""
    m.num_heads = _heads_left(m.num_heads, m.proj.in_features, pruned.get((f"{name}.proj", "in")))


def _our_resnet(name: str, m: nn.Module, pruned: Pruned) -> None:
    """Keep ``in_channels`` / ``out_channels`` of the ebsparse U-Net's ResnetBlock true after a shrink."""
    m.in_channels, m.out_channels = m.conv1.in_channels, m.conv2.out_channels


_RULES: dict[str, Callable[[str, nn.Module, Pruned], None]] = {
    "ebsparse.models.dit.DiT": _our_dit,
    "ebsparse.models.dit.Attention": _our_attention,
    "ebsparse.models.ddpm_unet.ResnetBlock": _our_resnet,
    "diffusers.models.downsampling.Downsample2D": _resample,
    "diffusers.models.upsampling.Upsample2D": _resample,
    "diffusers.models.resnet.ResnetBlock2D": _resnet,
    "diffusers.models.attention_processor.Attention": _attention,
    "diffusers.models.embeddings.PatchEmbed": _patch_embed,
}


def apply_fixups(model: nn.Module, pruned: Pruned) -> list[str]:
    """Repair cached widths in place; returns the names of the modules touched."""
    touched = []
    for name, m in model.named_modules():
        rule = _RULES.get(f"{type(m).__module__}.{type(m).__qualname__}")
        if rule is not None:
            rule(name, m, pruned)
            touched.append(name)
    return touched
