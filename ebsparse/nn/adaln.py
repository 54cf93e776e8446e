"""DiT's adaLN arithmetic, on the fused ops where that is safe: `norm_modulate(norm, x, shift,
scale, fused)` is ``modulate(norm(x), shift, scale)`` (ebsparse.ops.layer_norm_modulate),
`gated_add(x, gate, branch, fused)` is ``x + gate[:, None] * branch`` (ebsparse.ops.gated_residual),
and `gated_add_norm_modulate` the two chained (ebsparse.ops.residual_norm_modulate).

A block asks `fused_adaln(x, *norms)` once per forward and passes the answer to both: the ops run
on the CPU in eager mode for float32/float64 when every norm is a plain, unobserved, affine-free
``nn.LayerNorm`` over x's channels. Otherwise the block runs ATen's composition, the norm module
itself included, so that its hooks fire and autograd records the usual nodes: torch-pruning's
graph tracing (which hooks the norms and follows the adds and products), MAC counting,
``torch.compile`` (which fuses the arithmetic itself) and any other device see the original block.
The backend is resolved once per input shape, measured by `auto` like the sparse layers'.
"""

from __future__ import annotations

import torch
from torch import nn
from ebsparse.backends import dispatch
from ebsparse.backends.base import Backend
from ebsparse.nn.activation import observed
from ebsparse.ops.gated_residual import GatedResidualInputs, run_gated_residual
from ebsparse.ops.layer_norm_modulate import LayerNormModulateInputs, run_layer_norm_modulate
from ebsparse.ops.residual_norm_modulate import ResidualNormModulateInputs, run_residual_norm_modulate

# The backend the ops ask for: "auto" whatever EBSPARSE_BACKEND says (that variable names the sparse
# layers' backend); tests set "native" or "dense".
BACKEND = "auto"
_resolved: dict[tuple, Backend] = {}
_DTYPES = (torch.float32, torch.float64)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """DiT's modulation: ``x * (1 + scale[:, None]) + shift[:, None]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _plain_norm(norm: nn.Module, channels: int) -> bool:
    return (type(norm) is nn.LayerNorm and norm.weight is None and norm.bias is None
            and tuple(norm.normalized_shape) == (channels,) and not observed(norm))


def fused_adaln(x: torch.Tensor, *norms: nn.Module) -> bool:
    """Whether a block with these LayerNorms runs `norm_modulate` and `gated_add` on the fused ops
    for the residual stream x (B, N, C) (see the module docstring)."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and x.dim() == 3 and x.shape[-1] > 0
            and not torch.compiler.is_compiling() and all(_plain_norm(n, x.shape[-1]) for n in norms))


def _backend(inputs) -> Backend:
    key = (inputs.op, BACKEND, tuple(inputs.input.shape), inputs.dtype, torch.get_num_threads())
    backend = _resolved.get(key)
    if backend is None:
        backend = _resolved[key] = dispatch.resolve(BACKEND, inputs)
    return backend


def norm_modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                  fused: bool) -> torch.Tensor:
    """``modulate(norm(x), shift, scale)``; one op when `fused` (from `fused_adaln`) and shift and
    scale share x's dtype (not so under autocast)."""
    if not fused or shift.dtype != x.dtype or scale.dtype != x.dtype:
        return modulate(norm(x), shift, scale)
    backend = _backend(LayerNormModulateInputs(x.detach(), shift.detach(), scale.detach(), norm.eps))
    return run_layer_norm_modulate(x, shift, scale, norm.eps, backend)


def gated_add(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor, fused: bool) -> torch.Tensor:
    """``x + gate[:, None] * branch``; one op when `fused` (from `fused_adaln`) and gate and branch
    share x's dtype and branch x's shape."""
    if not fused or gate.dtype != x.dtype or branch.dtype != x.dtype or branch.shape != x.shape:
        return x + gate.unsqueeze(1) * branch
    backend = _backend(GatedResidualInputs(x.detach(), gate.detach(), branch.detach()))
    return run_gated_residual(x, gate, branch, backend)


def gated_add_norm_modulate(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor, norm: nn.Module,
                            shift: torch.Tensor, scale: torch.Tensor, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, modulate(norm(out), shift, scale))`` with ``out = x + gate[:, None] * branch``: one op when
    `fused` (from `fused_adaln`, with `norm` among its norms) and the tensors share x's dtype and
    branch x's shape, else `gated_add` then `norm_modulate`."""
    if not fused or any(t.dtype != x.dtype for t in (gate, branch, shift, scale)) or branch.shape != x.shape:
        out = gated_add(x, gate, branch, fused)
        return out, norm_modulate(norm, out, shift, scale, fused)
    backend = _backend(ResidualNormModulateInputs(x.detach(), gate.detach(), branch.detach(), shift.detach(),
                                                  scale.detach(), norm.eps))
    return run_residual_norm_modulate(x, gate, branch, shift, scale, norm.eps, backend)
