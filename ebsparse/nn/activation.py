"""`gelu_tanh_act(act, x)`: ``act(x)`` for a model's ``nn.GELU(approximate="tanh")``, on the faster
kernel (ebsparse.ops.gelu_tanh) where that is safe; `dropout_act(drop, x)` likewise for a model's
``nn.Dropout`` in training (ebsparse.ops.dropout: another random stream than ATen's, one draw of
torch's generator per call).

As `ebsparse.nn.norm.norm_silu`: the op runs on the CPU in eager mode when `act` is a plain
``nn.GELU(approximate="tanh")`` that nothing observes; otherwise the module itself is called, so its
hooks fire (torch-pruning's tracing, MAC counting) and torch.compile sees ATen's op. The backend is
resolved once per input shape, measured by `auto`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.ops.dropout import run_dropout
from ebsparse.ops.gelu_tanh import GeluTanhInputs, run_gelu_tanh

# The backend `gelu_tanh_act` asks for: "auto" whatever EBSPARSE_BACKEND says (that variable names
# the sparse layers' backend); tests set "native" or "dense".
BACKEND = "auto"
DROPOUT_BACKEND = "auto"  # not timed: auto takes the native kernel wherever it runs
_resolved: dict[tuple, Backend] = {}


def observed(module: nn.Module) -> bool:
    """Whether a forward hook would see `module`'s call (its own hooks or global ones)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks)


def is_plain_tanh_gelu(act: nn.Module) -> bool:
    """Whether `act` is exactly ``nn.GELU(approximate="tanh")`` and nothing observes its call, so a
    kernel may compute it instead of the module."""
    return type(act) is nn.GELU and act.approximate == "tanh" and not observed(act)


def gelu_tanh_act(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; the gelu_tanh op for an unobserved ``nn.GELU(approximate="tanh")`` on the CPU in
    eager mode."""
    if (not is_plain_tanh_gelu(act) or x.device.type != "cpu" or torch.compiler.is_compiling()
            or x.dtype not in (torch.float32, torch.float64)):
        return act(x)
    key = (BACKEND, tuple(x.shape), x.dtype, torch.get_num_threads())
    backend = _resolved.get(key)
    if backend is None:
        backend = _resolved[key] = dispatch.resolve(BACKEND, GeluTanhInputs(x.detach()))
    return run_gelu_tanh(x, backend)


def dropout_act(drop: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``drop(x)``; the dropout op for an unobserved plain ``nn.Dropout`` in training on the CPU in
    eager mode (float32/float64, not in place)."""
    if (type(drop) is not nn.Dropout or not drop.training or drop.inplace or not 0.0 < drop.p <= 1.0
            or x.device.type != "cpu" or torch.compiler.is_compiling() or observed(drop)
            or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0):
        return drop(x)
    key = ("dropout", DROPOUT_BACKEND, x.dtype)
    backend = _resolved.get(key)
    if backend is None:
        backend = _resolved[key] = dispatch.resolve_untimed(DROPOUT_BACKEND, "dropout", x.device, x.dtype)
    return run_dropout(x, float(drop.p), backend)
