"""``block_sparse_attention``: attention computed only on the kept (query block, key block) pairs
of a layout (:mod:`ebsparse.formats.block_layout`), forward and backward.

Backends: ``native`` (the flash-style C++ CPU kernel, csrc/cpu/attention/), ``triton`` (tl.dot
kernels, ebsparse/triton/block_attention.py: CUDA, or the interpreter in tests) and ``dense``
(``scaled_dot_product_attention`` with the layout's dense boolean mask: the baseline the kernels
are measured against). ``auto`` takes the first usable kernel backend (native on CPU, triton on
CUDA), dense last; it is not timed (a kernel that skips masked blocks does less work than dense).

Same two ways in as the layer ops: a plain autograd.Function in eager mode, the custom ops
``ebsparse::block_sparse_attention`` (returning the output and the row log-sum-exp the backward
reads) and ``block_sparse_attention_backward`` under torch.compile. The layout is an op input (a
small CPU bool tensor); its CSR is built inside the op, cached by content, so nothing
data-dependent is traced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ebsparse.backends import dispatch, registry
from ebsparse.backends.base import Backend
from ebsparse.backends.dense import masked_sdpa
from ebsparse.ops import calls
from ebsparse.ops.checks import check_once_differentiable
from ebsparse.formats.block_layout import check_layout, layout_csr, num_blocks

__all__ = ["BlockAttentionInputs", "block_sparse_attention"]

_T = torch.Tensor


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
    op: ClassVar[str] = "block_attention"

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype

    def tuning_key(self) -> tuple:
        return (self.op, tuple(self.query.shape), self.block_size, int(self.col.numel()), str(self.dtype))


_CSR_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _csr(layout: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A layout's CSR on `device`, cached by content (layouts are small and reused every step)."""
    key = (tuple(layout.shape), layout.numpy().tobytes(), str(device))
    if key not in _CSR_CACHE:
        if len(_CSR_CACHE) > 64:
            _CSR_CACHE.clear()
        crow, col = layout_csr(layout)
        _CSR_CACHE[key] = (crow.to(device), col.to(device))
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


def _inputs(query: _T, key: _T, value: _T, layout: _T, block_size: int, scale: float) -> BlockAttentionInputs:
    """The inputs object of a call on checked arguments (layout (layout heads, nq, nk) on the CPU)."""
    crow, col = _csr(layout, query.device)
    return BlockAttentionInputs(query.contiguous(), key.contiguous(), value.contiguous(), layout, crow, col,
                                block_size, scale)


def _backward(backend: Backend, inputs: BlockAttentionInputs, grad_out: _T, out: _T, lse: _T):
    if registry.executed is not None:
        registry.executed.append((inputs.op, "backward", backend.name))
    return backend.block_attention_backward(inputs, grad_out.contiguous(), out, lse)


# ---- eager: a plain autograd.Function ------------------------------------------------------------

class _EagerBlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, inputs, backend):
        out, lse = calls.forward(backend, inputs)
        ctx.inputs, ctx.backend = inputs, backend
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        check_once_differentiable("block_sparse_attention", grad_out, query, key, value)
        dq, dk, dv = _backward(ctx.backend, ctx.inputs, grad_out, out, lse)
        return dq, dk, dv, None, None


# ---- traced: torch.library custom ops ------------------------------------------------------------

@torch.library.custom_op("ebsparse::block_sparse_attention", mutates_args=())
def _attention_op(query: _T, key: _T, value: _T, layout: _T, block_size: int, scale: float,
                  backend: str) -> tuple[_T, _T]:
    """(out, lse (B, H, N)): lse is what the backward op reads."""
    inputs = _inputs(query, key, value, layout, block_size, scale)
    return calls.forward(registry.get_backend(backend), inputs)


@torch.library.custom_op("ebsparse::block_sparse_attention_backward", mutates_args=())
def _attention_backward_op(grad_out: _T, query: _T, key: _T, value: _T, out: _T, lse: _T, layout: _T,
                           block_size: int, scale: float, backend: str) -> tuple[_T, _T, _T]:
    inputs = _inputs(query, key, value, layout, block_size, scale)
    return tuple(_backward(registry.get_backend(backend), inputs, grad_out, out, lse))


@_attention_op.register_fake
def _(query, key, value, layout, block_size, scale, backend):
    lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    return torch.empty_like(query, memory_format=torch.contiguous_format), query.new_empty(query.shape[:3],
                                                                                           dtype=lse_dtype)


@_attention_backward_op.register_fake
def _(grad_out, query, key, value, out, lse, layout, block_size, scale, backend):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (query, key, value))


def _setup_context(ctx, inputs, output):
    query, key, value, layout, block_size, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse, layout)
    ctx.args = (block_size, scale, backend)


def _traced_backward(ctx, grad_out, grad_lse):
    query, key, value, out, lse, layout = ctx.saved_tensors
    check_once_differentiable("block_sparse_attention", grad_out, query, key, value)
    dq, dk, dv = _attention_backward_op(grad_out, query, key, value, out, lse, layout, *ctx.args)
    return dq, dk, dv, None, None, None, None


_attention_op.register_autograd(_traced_backward, setup_context=_setup_context)


# ---- entry point ---------------------------------------------------------------------------------

def block_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: torch.Tensor,
                           block_size: int, scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Attention on the layout's kept blocks only; differentiable in q, k, v.

    - query, key, value: (B, H, N, D), same dtype and device (N need not be a multiple of the block).
    - layout: bool (nq, nk) for all heads or (H, nq, nk) per head, nq = nk = ceil(N / block_size).
    - scale: defaults to ``D ** -0.5`` (the kept head width after pruning).
    - backend: "native", "triton", "dense", "auto" (default; the first usable kernel backend) or None
      for ``EBSPARSE_BACKEND``. Under torch.compile an unnamed backend runs dense, as for the layer ops.
    Returns (B, H, N, D): ``softmax(scale * Q K^T + M) V``; a query row whose blocks are all dropped
    gets 0 (and zero gradients), never NaN. Raises ValueError for bad arguments and RuntimeError when
    a named backend cannot run (with its reasons) or for a second-order gradient.
    """
    _check(query, key, value, block_size, scale)
    b, h, n, d = query.shape
    nb = num_blocks(n, block_size)
    lay = check_layout(layout, h, nb, nb)
    scale = float(d ** -0.5 if scale is None else scale)
    if torch.compiler.is_compiling():
        name = backend if backend not in (None, "auto") else "dense"
        return _attention_op(query, key, value, lay, block_size, scale, name)[0]
    chosen = dispatch.resolve_untimed(backend, BlockAttentionInputs.op, query.device, query.dtype)
    inputs = _inputs(query, key, value, lay, block_size, scale)
    if chosen.name == "dense":  # autograd through SDPA: both phases run dense
        if registry.executed is not None:
            registry.executed.extend([(inputs.op, "forward", "dense"), (inputs.op, "backward", "dense")])
        return masked_sdpa(inputs)
    return _EagerBlockAttention.apply(inputs.query, inputs.key, inputs.value, inputs, chosen)
