"""`norm_silu(norm, x)`: ``F.silu(norm(x))`` for a model's GroupNorm, fused where that is faster.

The fused op (ebsparse.ops.group_norm_silu) runs on the CPU in eager mode when `norm` is a plain
``nn.GroupNorm`` that nothing observes; otherwise the module itself is called, so that its forward
hooks fire and autograd records GroupNorm's own node: torch-pruning's graph tracing and MAC counting
(which hook the module), ``torch.compile`` (which fuses the two by itself) and any other device see
the unfused pair. The backend (fused kernel or ATen) is resolved once per input shape, measured by
`auto` like the sparse layers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.nn.activation import observed
from ebsparse.ops.group_norm_silu import GroupNormSiluInputs, run_group_norm_silu

# The backend `norm_silu` asks for: "auto" whatever EBSPARSE_BACKEND says (that variable names the
# sparse layers' backend); tests set "native" or "dense".
BACKEND = "auto"
_resolved: dict[tuple, Backend] = {}


def norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``F.silu(norm(x))``; one fused op for an unobserved ``nn.GroupNorm`` on the CPU in eager mode."""
    if (type(norm) is not nn.GroupNorm or x.device.type != "cpu" or torch.compiler.is_compiling()
            or observed(norm) or x.dim() < 2 or x.dtype not in (torch.float32, torch.float64)):
        return F.silu(norm(x))
    key = (BACKEND, tuple(x.shape), x.dtype, norm.num_groups, norm.weight is not None, torch.get_num_threads())
    backend = _resolved.get(key)
    if backend is None:
        inputs = GroupNormSiluInputs(x.detach(), norm.num_groups, norm.weight, norm.bias, norm.eps)
        backend = _resolved[key] = dispatch.resolve(BACKEND, inputs)
    return run_group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps, backend)
