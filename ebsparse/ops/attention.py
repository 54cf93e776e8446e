"""``block_sparse_attention``: attention computed only on the kept (query block, key block) pairs
of a layout (:mod:`ebsparse.formats.block_layout`), forward and backward.

Backends: ``native`` (the flash-style C++ CPU kernel, csrc/cpu/attention/), ``triton`` (tl.dot
kernels, ebsparse/triton/block_attention.py: CUDA, or the interpreter in tests) and ``dense``
(``scaled_dot_product_attention`` with the layout's dense boolean mask: the baseline the kernels
are measured against). ``auto`` takes the first usable kernel backend (native on CPU, triton on
CUDA), dense last; it is not timed (a kernel that skips masked blocks does less work than dense).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ebsparse.backends import dispatch, registry
from ebsparse.ops import calls
from ebsparse.formats.block_layout import check_layout, dense_mask, layout_csr, num_blocks

__all__ = ["BlockAttentionInputs", "block_sparse_attention"]


@dataclass
class BlockAttentionInputs:
    """q/k/v (B, H, N, D) contiguous; the layout (layout heads, nq, nk) bool and its CSR."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    layout: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    block_size: int
    scale: float
    op = "block_attention"

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype

    def tuning_key(self) -> tuple:
        return (self.op, tuple(self.query.shape), self.block_size, int(self.col.numel()), str(self.dtype))


_CSR_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _csr(layout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layout's CSR, cached by content (layouts are small and reused every step)."""
    key = (tuple(layout.shape), layout.numpy().tobytes())
    if key not in _CSR_CACHE:
        if len(_CSR_CACHE) > 64:
            _CSR_CACHE.clear()
        _CSR_CACHE[key] = layout_csr(layout)
    return _CSR_CACHE[key]


def _check(query, key, value, block_size, scale) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{name}: expected a (batch, heads, tokens, head_dim) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(f"key, value: expected the query's shape {tuple(query.shape)}, got {tuple(key.shape)} "
                         f"and {tuple(value.shape)}")
    if key.dtype != query.dtype or value.dtype != query.dtype or key.device != query.device \
            or value.device != query.device:
        raise ValueError("key, value: expected the query's dtype and device")
    if not query.dtype.is_floating_point:
        raise ValueError(f"query: expected a floating-point tensor, got {query.dtype}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale: expected a positive number or None, got {scale!r}")


def block_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: torch.Tensor,
                           block_size: int, scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Attention on the layout's kept blocks only; differentiable in q, k, v.

    - query, key, value: (B, H, N, D), same dtype and device (N need not be a multiple of the block).
    - layout: bool (nq, nk) for all heads or (H, nq, nk) per head, nq = nk = ceil(N / block_size).
    - scale: defaults to ``D ** -0.5`` (the kept head width after pruning).
    Returns (B, H, N, D): ``softmax(scale * Q K^T + M) V``; a query row whose blocks are all dropped
    gets 0 (and zero gradients), never NaN. Raises ValueError for bad arguments and RuntimeError when
    a named backend cannot run (with its reasons).
    """
    _check(query, key, value, block_size, scale)
    b, h, n, d = query.shape
    nb = num_blocks(n, block_size)
    lay = check_layout(layout, h, nb, nb)
    crow, col = _csr(lay)
    inputs = BlockAttentionInputs(query.contiguous(), key.contiguous(), value.contiguous(), lay,
                                  crow.to(query.device), col.to(query.device), block_size,
                                  float(d ** -0.5 if scale is None else scale))
    chosen = dispatch.resolve_untimed(backend, inputs.op, inputs.device, inputs.dtype)
    if chosen.name == "dense":  # autograd through SDPA: both phases run dense
        if registry.executed is not None:
            registry.executed.extend([(inputs.op, "forward", "dense"), (inputs.op, "backward", "dense")])
        return dense_block_attention(inputs)
    return _BlockAttention.apply(inputs.query, inputs.key, inputs.value, inputs, chosen)


def dense_block_attention(inputs: BlockAttentionInputs) -> torch.Tensor:
    """SDPA with the layout's dense boolean mask (autograd through it); all-dropped rows give 0."""
    n = inputs.query.shape[-2]
    mask = dense_mask(inputs.layout.to(inputs.device), n, n, inputs.block_size).unsqueeze(0)
    live = mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(inputs.query, inputs.key, inputs.value, attn_mask=mask | ~live,
                                         scale=inputs.scale)
    return out * live if not bool(live.all()) else out


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, inputs, backend):
        out, lse = calls.forward(backend, inputs)
        ctx.inputs, ctx.backend = inputs, backend
        ctx.save_for_backward(out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        out, lse = ctx.saved_tensors
        if registry.executed is not None:
            registry.executed.append((ctx.inputs.op, "backward", ctx.backend.name))
        dq, dk, dv = ctx.backend.block_attention_backward(ctx.inputs, grad_out.contiguous(), out, lse)
        return dq, dk, dv, None, None
