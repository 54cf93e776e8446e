"""``qkv_attention``: multi-head self-attention read straight from a fused qkv projection.

``qkv`` is what a timm/DiT ``qkv`` linear writes, (B, N, 3 * H * D) token-major; the output is what
the ``proj`` linear reads, (B, N, H * D). The usual path (reshape, unbind, transpose to (B, H, N, D),
SDPA, transpose back) copies q, k, v and the output around SDPA and, in the backward, stacks dq, dk,
dv into d(qkv) with a cat: at DiT-S/2's 64 tokens those copies and SDPA's per-call overheads cost
more than the attention products. The native backend (csrc/cpu/attention/qkv_attention.cpp) runs
small GEMMs per (batch, head) that read and write the token-major tensors in place and writes
d(qkv) directly; it saves the row log-sum-exp (B, H, N) for the backward and, when a backward will
run (grad enabled, qkv requiring grad) and its float32 AVX-512 kernel runs at most 64 tokens, the
softmax probabilities P (B, H, N, N): then P is no bigger than the output (N <= H * D at DiT's
shapes, 3 MiB per call at DiT-S/2's batch of 32) and the backward skips recomputing it (one of its
five products). The dense backend is SDPA
on the unbound q, k, v (the old path, differentiated by autograd).

``auto`` is untimed: native where it runs (CPU, float32/float64) for sequences of at most
`NATIVE_MAX_TOKENS` tokens, dense otherwise. The native kernel holds a whole N x N score matrix per
(batch, head), so past a few hundred tokens SDPA's flash-style CPU kernel wins (bench/test_qkv_attention.py
measures the crossing). Eager only: under torch.compile this is SDPA on the unbound q, k, v.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.overrides import handle_torch_function, has_torch_function

from ebsparse.backends import dispatch, registry
from ebsparse.backends.base import Backend
from ebsparse.backends.dense import qkv_sdpa
from ebsparse.ops import calls
from ebsparse.ops.checks import check_once_differentiable, check_tensor

__all__ = ["NATIVE_MAX_TOKENS", "QkvAttentionInputs", "qkv_attention"]

#: auto runs the native kernel up to this many tokens, SDPA beyond (measured: bench/test_qkv_attention.py).
NATIVE_MAX_TOKENS = 256


@dataclass(eq=False, slots=True)
class QkvAttentionInputs:
    """qkv (B, N, 3 * H * D) contiguous; num_heads H; scale (default D ** -0.5); save_probs: a
    backward will run, so the native kernel may keep P for it."""

    op: ClassVar[str] = "qkv_attention"
    qkv: torch.Tensor
    num_heads: int
    scale: float
    save_probs: bool = False

    @property
    def device(self) -> torch.device:
        return self.qkv.device

    @property
    def dtype(self) -> torch.dtype:
        return self.qkv.dtype

    def tuning_key(self) -> tuple:
        return (tuple(self.qkv.shape), self.num_heads)


class _EagerQkvAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, inputs: QkvAttentionInputs, backend: Backend):
        out, saved = calls.forward(backend, inputs)
        ctx.inputs, ctx.backend = inputs, backend
        ctx.save_for_backward(qkv, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, *saved = ctx.saved_tensors
        check_once_differentiable("qkv_attention", grad_out, qkv)
        if registry.executed is not None:
            registry.executed.append((QkvAttentionInputs.op, "backward", ctx.backend.name))
        return ctx.backend.qkv_attention_backward(ctx.inputs, grad_out.contiguous(), tuple(saved)), None, None


def _check(qkv, num_heads, scale) -> None:
    check_tensor(qkv, "qkv", dims=3, floating=True)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    if qkv.shape[2] == 0 or qkv.shape[2] % (3 * num_heads):
        raise ValueError(f"qkv: expected a last dim of 3 * num_heads * head_dim = a positive multiple of "
                         f"{3 * num_heads} (num_heads={num_heads}), got shape {tuple(qkv.shape)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ValueError(f"scale: expected a positive number or None, got {scale!r}")


def qkv_attention(qkv: torch.Tensor, num_heads: int, scale: float | None = None, *,
                  backend: str | None = None) -> torch.Tensor:
    """Multi-head self-attention on a fused qkv projection; differentiable in ``qkv``.

    Args:
        qkv: (B, N, 3 * H * D) floating, token-major: token t's q of head h is
            ``qkv[b, t, h*D:(h+1)*D]``, its k and v follow at + H*D and + 2*H*D (timm/DiT layout).
        num_heads: H (D = qkv.shape[-1] / (3 H); any D, odd included).
        scale: the score scale, default ``D ** -0.5``.
        backend: "native" (CPU kernel, float32/float64), "dense" (SDPA), "auto" (default: native up
            to `NATIVE_MAX_TOKENS` tokens where it runs, else dense) or None for `EBSPARSE_BACKEND`.
    Returns (B, N, H * D): head h's ``softmax(scale Q K^T) V`` in columns h*D:(h+1)*D. Raises
    TypeError/ValueError naming a bad argument, RuntimeError for a named backend that cannot run
    or a second-order gradient.
    """
    if torch.compiler.is_compiling():
        return qkv_sdpa(qkv, num_heads, scale)
    if has_torch_function((qkv,)):  # lets TorchFunctionModes (MAC counting) see the call
        return handle_torch_function(qkv_attention, (qkv,), qkv, num_heads, scale, backend=backend)
    _check(qkv, num_heads, scale)
    d = qkv.shape[2] // (3 * num_heads)
    chosen = dispatch.resolve_untimed(backend, QkvAttentionInputs.op, qkv.device, qkv.dtype)
    if chosen.name != "dense" and qkv.shape[1] > NATIVE_MAX_TOKENS and dispatch.requests_auto(backend):
        chosen = registry.get_backend("dense")
    inputs = QkvAttentionInputs(qkv.contiguous(), num_heads, float(d ** -0.5 if scale is None else scale),
                                save_probs=torch.is_grad_enabled() and qkv.requires_grad)
    if chosen.name == "dense":  # autograd through SDPA: both phases run dense
        if registry.executed is not None:
            registry.executed.extend([(inputs.op, "forward", "dense"), (inputs.op, "backward", "dense")])
        return chosen.qkv_attention_forward(inputs)
    return _EagerQkvAttention.apply(inputs.qkv, inputs, chosen)
