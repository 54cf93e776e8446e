"""Mixed precision: what the sparse ops do under `torch.autocast`.

On CUDA (and any accelerator) a sparse layer runs in the autocast dtype, as `F.linear` and
`F.conv2d` would: its floating inputs, weight and bias (float32, float16, bfloat16; float64 is left
alone, as autocast does) are cast before dispatch, so the backend is chosen for, and runs, bf16/fp16
kernels (fp32 accumulation) — a model trained under `torch.autocast("cuda", torch.bfloat16)` keeps
its sparse layers sparse. The casts are ordinary autograd ops: the fp32 master weight gets an fp32
gradient.

On the CPU the sparse kernels are float32/float64 (csrc/), so a layer under `torch.autocast("cpu")`
keeps its own dtype and runs sparse, unless a backend is named explicitly (argument or
EBSPARSE_BACKEND) that runs the autocast dtype there (e.g. "triton" under TRITON_INTERPRET=1, or
"dense"); `auto` never trades a sparse fp32 kernel for a dense bf16 one behind the user's back.
Such a layer treats its input as autocast treats an op it keeps in float32: a bf16 activation from
an autocast layer before it is cast to the weight's dtype, and the layer's output has the weight's
dtype. The op then runs with CPU autocast off (`cpu_autocast_off`): otherwise the dense ATen calls
inside it (a layer `auto` resolved to dense, the timing that resolves it) would be cast to bf16
again behind the layer's back.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from ebsparse.backends.registry import get_backend

_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(device: torch.device, op: str, backend: str | None) -> torch.dtype | None:
    """The dtype an `op` call on `device` runs in under the current autocast state; None for its
    inputs' own dtype."""
    if not torch.is_autocast_enabled(device.type):
        return None
    dtype = torch.get_autocast_dtype(device.type)
    if device.type == "cpu":
        name = backend or os.environ.get("EBSPARSE_BACKEND") or "auto"
        if name == "auto" or get_backend(name).unavailable_reasons(op, device, dtype):
            return None
    return dtype


def cast(dtype: torch.dtype | None, *tensors):
    """`tensors` with the float32/float16/bfloat16 ones cast to `dtype` (None: unchanged)."""
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _CASTABLE and t.dtype != dtype else t
                 for t in tensors)


def autocast_args(op: str, backend: str | None, input, weight, bias):
    """(input, weight, bias) as `op` runs them under the current autocast state. Call it before
    entering `cpu_autocast_off`, which hides that state."""
    if not isinstance(input, torch.Tensor):
        return input, weight, bias
    dtype = autocast_dtype(input.device, op, backend)
    if (dtype is None and input.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and isinstance(weight, torch.Tensor) and weight.dtype in _CASTABLE):
        dtype = weight.dtype  # the layer keeps its own dtype (see the module docstring)
    return cast(dtype, input, weight, bias)


def cpu_autocast_off():
    """A context with CPU autocast off, for the body of a sparse op after `autocast_args` cast its
    arguments to the dtype it runs in (entered only where autocast is on: it costs microseconds)."""
    if torch.is_autocast_enabled("cpu"):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


def cuda_custom_bwd(backward):
    """``torch.amp.custom_bwd(device_type="cuda")`` (the backward runs under the forward's CUDA
    autocast state), entering the autocast context only where it changes something: the forward ran
    under CUDA autocast, or the backward is called inside it. Otherwise the context would only
    disable a disabled autocast, and entering and leaving it costs ~10 us per layer per step on the
    CPU. Pair with ``torch.amp.custom_fwd(device_type="cuda")``, which records the forward's state."""
    with_context = torch.amp.custom_bwd(backward, device_type="cuda")

    @functools.wraps(backward)
    def decorated(ctx, *grads):
        if ctx._fwd_used_autocast or torch.is_autocast_enabled("cuda"):
            return with_context(ctx, *grads)
        return backward(ctx, *grads)

    return decorated
