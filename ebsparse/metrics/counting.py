"""Parameter and MAC counts with the rules the diffusion-pruning papers use.

The Early-Bird and Diff-Pruning tables come from Torch-Pruning's op counter (ptflops-style module
hooks, batch 1). Its rules, reproduced here:

- ``Conv*d``: ``out.numel() * (in/groups * prod(kernel))`` plus ``out.numel()`` for the bias;
- ``Linear``: ``in.numel() * out_features`` plus the bias (counted once per output element);
- ``GroupNorm``/``LayerNorm``/``BatchNorm``: ``numel`` of the input, doubled when affine;
- activations, ``interpolate``, padding, additions and concatenations are free;
- attention matmuls (``bmm``/``matmul``/``@``/``scaled_dot_product_attention``/``qkv_attention``) are *not* in the
  papers' U-Net numbers, so they are reported separately as ``attention_macs``. The DiT paper's
  Gflops *do* include them: compare ``MacCount.total`` with DiT tables and ``MacCount.macs`` with the
  U-Net tables.

Params are all parameters, trainable or not: the U-Nets have no frozen ones, and the DiT paper's
675.1M for DiT-XL/2 includes the fixed sin-cos position table (294,912 entries, ``requires_grad=False``).
Pass ``trainable_only=True`` to leave frozen ones out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ebsparse.ops.qkv_attention import qkv_attention

__all__ = ["MacCount", "count_params", "count_macs"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, as the papers count; see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_params(model): expected an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class MacCount:
    """Result of :func:`count_macs`.

    ``macs``: convolutions, linears and norms (the papers' U-Net numbers). ``attention_macs``: the
    q·k and attn·v matmuls. ``by_module``: ``macs`` split by qualified module name.
    """

    macs: int
    attention_macs: int
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """MACs including the attention matmuls (the DiT paper's convention)."""
        return self.macs + self.attention_macs


def _conv_macs(m: nn.modules.conv._ConvNd, inp: torch.Tensor, out: torch.Tensor) -> int:
    per_position = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        # every input position scatters a full kernel into out_channels/groups outputs
        n = inp.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    else:
        n = out.numel() * per_position
    if m.bias is not None:
        n += out.numel()
    return n


def _linear_macs(m: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    n = inp.numel() * m.out_features
    if m.bias is not None:
        n += out.numel()
    return n


def _norm_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    affine = getattr(m, "affine", None)
    if affine is None:
        affine = getattr(m, "elementwise_affine", False)
    return inp.numel() * (2 if affine else 1)


_RULES: list[tuple[type, Any]] = [
    (nn.modules.conv._ConvNd, _conv_macs),
    (nn.Linear, _linear_macs),
    (nn.GroupNorm, _norm_macs),
    (nn.LayerNorm, _norm_macs),
    (nn.modules.batchnorm._BatchNorm, _norm_macs),
]


def _matmul_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    if a.ndim < 1 or b.ndim < 1:
        return 0
    a_shape = a.shape if a.ndim > 1 else (1,) + tuple(a.shape)
    b_shape = b.shape if b.ndim > 1 else tuple(b.shape) + (1,)
    n, k = a_shape[-2], a_shape[-1]
    m = b_shape[-1]
    batch = torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    return math.prod(batch) * n * k * m


def _sdpa_macs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    batch = math.prod(torch.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2])))
    L, E = q.shape[-2], q.shape[-1]
    S, Ev = k.shape[-2], v.shape[-1]
    return batch * L * S * (E + Ev)


class _AttentionCounter(TorchFunctionMode):
    """Counts matmul-type calls that are not part of a counted module (those are attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.bmm, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm):
            self.macs += _matmul_macs(args[0], args[1])
        elif func in (torch.baddbmm, torch.Tensor.baddbmm):
            self.macs += _matmul_macs(args[1], args[2])
        elif func is qkv_attention:
            qkv, heads = args[0], args[1] if len(args) > 1 else kwargs["num_heads"]
            b, n, width = qkv.shape
            self.macs += b * heads * n * n * 2 * (width // (3 * heads))
        elif func is F.scaled_dot_product_attention:
            q = args[0] if len(args) > 0 else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            v = args[2] if len(args) > 2 else kwargs["value"]
            self.macs += _sdpa_macs(q, k, v)
        return func(*args, **kwargs)


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: Any, **kwargs: Any) -> MacCount:
    """Run ``model(*inputs, **kwargs)`` once and count MACs with the papers' rules (module docstring).

    Pass batch-1 inputs to get the per-image numbers the papers report. The model's training mode is
    preserved; it runs in eval mode so dropout does not matter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_macs(model, ...): expected an nn.Module, got {type(model).__name__}")
    if not inputs and not kwargs:
        raise ValueError("count_macs(model, *inputs): give the inputs of one forward call, e.g. (x, t)")
    by_module: dict[str, int] = defaultdict(int)
    handles = []
    for name, mod in model.named_modules():
        for kind, rule in _RULES:
            if isinstance(mod, kind):
                def hook(m, inp, out, _name=name, _rule=rule):
                    by_module[_name] += int(_rule(m, inp[0], out))
                handles.append(mod.register_forward_hook(hook))
                break
    was_training = model.training
    model.eval()
    counter = _AttentionCounter()
    try:
        with counter:
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return MacCount(macs=sum(by_module.values()), attention_macs=counter.macs, by_module=dict(by_module))
