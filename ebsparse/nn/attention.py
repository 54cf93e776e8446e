"""Block-sparse attention as a drop-in: a diffusers attention processor, and the switch of
ebsparse's own DiT and U-Net attention (their ``block_sparse`` attribute).

:func:`use_block_sparse_attention` puts a layout on every self-attention of a model, ours or
diffusers' (duck-typed: diffusers is not imported here), and returns how many it changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ebsparse.ops.attention import block_sparse_attention

__all__ = ["BlockSparse", "BlockSparseAttnProcessor", "use_block_sparse_attention"]

#: a layout, or a function of the token count giving one (the U-Net's attention levels differ)
LayoutSpec = torch.Tensor | Callable[[int], torch.Tensor]


@dataclass
class BlockSparse:
    """What a self-attention computes on: blocks of ``block_size`` tokens, kept per ``layout``."""

    layout: LayoutSpec
    block_size: int
    backend: str | None = None

    def layout_for(self, tokens: int) -> torch.Tensor:
        return self.layout(tokens) if callable(self.layout) else self.layout

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        return block_sparse_attention(q, k, v, self.layout_for(q.shape[-2]), self.block_size, scale=scale,
                                      backend=self.backend)


class BlockSparseAttnProcessor:
    """diffusers ``Attention`` processor (self-attention, as ``AttnProcessor2_0`` computes it) with
    :func:`ebsparse.ops.block_sparse_attention` in place of SDPA. Cross-attention and an
    ``attention_mask`` are refused (the layout is the mask)."""

    def __init__(self, layout: LayoutSpec, block_size: int, backend: str | None = None):
        self.sparse = BlockSparse(layout, block_size, backend)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("BlockSparseAttnProcessor: self-attention only (no encoder_hidden_states, no "
                             "attention_mask: the block layout is the mask)")
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        hidden_states = self.sparse(query, key, value, scale=attn.scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if getattr(attn, "residual_connection", False):
            hidden_states = hidden_states + residual
        return hidden_states / getattr(attn, "rescale_output_factor", 1.0)


def use_block_sparse_attention(model: nn.Module, layout: LayoutSpec | None, block_size: int = 64,
                               backend: str | None = None) -> int:
    """Make every self-attention of ``model`` block-sparse (``layout=None``: back to dense).

    ebsparse's DiT ``Attention`` and U-Net ``AttnBlock`` take it through their ``block_sparse``
    attribute; diffusers' ``Attention`` modules (``set_processor``) get a
    :class:`BlockSparseAttnProcessor` (``layout=None`` restores ``AttnProcessor2_0``). ``layout``:
    a bool (nq, nk) or (heads, nq, nk) block layout, or a function of the token count returning one.
    Returns the number of attention modules changed; 0 raises ValueError (nothing to apply it to).
    """
    changed = 0
    for m in model.modules():
        if hasattr(m, "block_sparse"):
            m.block_sparse = None if layout is None else BlockSparse(layout, block_size, backend)
            changed += 1
        elif hasattr(m, "set_processor") and hasattr(m, "to_q") and not getattr(m, "is_cross_attention", False):
            if layout is None:
                from diffusers.models.attention_processor import AttnProcessor2_0

                m.set_processor(AttnProcessor2_0())
            else:
                m.set_processor(BlockSparseAttnProcessor(layout, block_size, backend))
            changed += 1
    if not changed:
        raise ValueError(f"use_block_sparse_attention: {type(model).__name__} has no self-attention module to change")
    return changed
