"""`thin_conv2d(conv, x)`: ``conv(x)`` for a model's dense conv with few channels on one side (the
first and last convs of a U-Net or an autoencoder: image or latent channels in, image or latent
channels out), run by the native direct conv engine where that is faster than ATen's.

Why: oneDNN computes channels in blocks of 8 or 16, so a conv with 1-8 input or output channels
pays for a full block, and for the layout changes around it; ebsparse's direct engine
(csrc/cpu/conv/, the sparse convs' kernels) loops over the weights it is given. Given every weight
(a full pattern), it ran such convs 3-7x faster than ATen, forward and both gradients (bench/NOTES.md).
At 16 channels and more the two are within ~20% either way, and at a U-Net's widths ATen is faster,
so only thin convs are considered.

Like `ebsparse.nn.norm.norm_silu`, the fast path is taken on the CPU in eager mode for a plain
``nn.Conv2d`` that nothing observes; otherwise the module itself is called, so its forward hooks
fire and autograd records ATen's node (torch-pruning's graph tracing and MAC counting hook the
module; ``torch.compile`` sees the module). Which of the two runs is measured once per input shape
and set of gradients wanted (a U-Net's first conv needs no input gradient, and ATen's is the slow
one) by `auto`'s chooser, with the sparse layers' margin: a resumed run takes the checkpoint's
recorded choice, so it runs the same kernels. Where dense wins, the module is called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ebsparse.backends import dispatch, registry, select
from ebsparse.backends.base import Backend
from ebsparse.backends.timing import time_call
from ebsparse.formats.index import PatternIndex, build_index
from ebsparse.nn.activation import observed
from ebsparse.ops.conv import run_conv2d
from ebsparse.ops.inputs import Conv2dInputs

# Input or output channels at most this many: what oneDNN pads to a block (see the module docstring).
MAX_THIN_CHANNELS = 8
# The backend `thin_conv2d` asks for: "auto" whatever EBSPARSE_BACKEND says (that variable names the
# sparse layers' backend); tests set "native" or "dense".
BACKEND = "auto"
_resolved: dict[tuple, Backend] = {}
_full_patterns: dict[tuple, tuple[torch.Tensor, PatternIndex]] = {}


def is_thin(conv: nn.Module) -> bool:
    """Whether `conv` is a plain ``nn.Conv2d`` that `thin_conv2d` may run on the native engine."""
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and min(conv.in_channels, conv.out_channels) <= MAX_THIN_CHANNELS)


def _full_pattern(weight: torch.Tensor) -> tuple[torch.Tensor, PatternIndex]:
    """A mask keeping every weight of this shape, and its index (kept for the process: a model has
    one or two thin shapes, and the native ops cache their packing per live index)."""
    key = (tuple(weight.shape), weight.device)
    pattern = _full_patterns.get(key)
    if pattern is None:
        mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        pattern = _full_patterns[key] = (mask, build_index(mask))
    return pattern


def _measure(conv: nn.Conv2d, x: torch.Tensor, mask: torch.Tensor, index: PatternIndex, grads: tuple[bool, ...]):
    """Seconds of this call's forward and the gradients it will want (`grads`: of x, weight, bias),
    on a candidate backend."""
    x_, w_ = x.detach().requires_grad_(grads[0]), conv.weight.detach().requires_grad_(grads[1])
    b_ = conv.bias.detach().requires_grad_(grads[2]) if conv.bias is not None else None
    wanted = [t for t in (x_, w_, b_) if t is not None and t.requires_grad]
    geometry = (list(conv.stride), list(conv.padding), list(conv.dilation))

    def measure(name: str) -> float:
        if name == "dense":
            forward = lambda: F.conv2d(x_, w_, b_, *geometry)  # noqa: E731 - what conv(x) runs
        elif name == "native":
            native = registry.get_backend("native")
            forward = lambda: run_conv2d(x_, w_, b_, mask, index, *geometry, native)  # noqa: E731
        else:
            raise NotImplementedError(f"thin_conv2d runs on dense or native, not {name}")

        def step():
            with torch.enable_grad():
                y = forward()
                if wanted:
                    torch.autograd.grad(y, wanted, torch.ones_like(y))
        return time_call(step, x.device)
    return measure


def thin_conv2d(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; on the native conv engine for an unobserved thin ``nn.Conv2d`` (`is_thin`) in eager
    mode on the CPU in float32, where it measured faster than ATen for this input shape."""
    weight, bias = getattr(conv, "weight", None), getattr(conv, "bias", None)
    if (not is_thin(conv) or x.device.type != "cpu" or torch.compiler.is_compiling() or observed(conv)
            or x.dim() != 4 or x.dtype != torch.float32 or weight.dtype != torch.float32
            or torch.is_autocast_enabled("cpu") or x.shape[1] != conv.in_channels):
        return conv(x)
    grads = tuple(t is not None and t.requires_grad and torch.is_grad_enabled() for t in (x, weight, bias))
    key = (BACKEND, tuple(x.shape), tuple(weight.shape), conv.stride, conv.padding, conv.dilation, grads,
           torch.get_num_threads())
    backend = _resolved.get(key)
    if backend is not None and backend.name == "dense":
        return conv(x)
    mask, index = _full_pattern(weight)
    if backend is None:
        if BACKEND == "auto":
            # Keyed apart from the sparse layers' conv2d choices (which time all three phases).
            name = select.choose("conv2d", x.device, x.dtype, _measure(conv, x, mask, index, grads),
                                 ("thin",) + key[1:])
        else:
            name = BACKEND
        inputs = Conv2dInputs(x.detach(), weight.detach(), None if bias is None else bias.detach(), mask, index,
                              list(conv.stride), list(conv.padding), list(conv.dilation))
        backend = _resolved[key] = dispatch.resolve(name, inputs)
    if backend.name == "dense":
        return conv(x)
    return run_conv2d(x, weight, bias, mask, index, list(conv.stride), list(conv.padding), list(conv.dilation),
                      backend)
