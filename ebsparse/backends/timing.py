"""Wall-clock timing used by automatic backend choice (never by tests)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch


def time_call(fn: Callable[[], object], device: torch.device, reps: int = 2, warmup: int = 1) -> float:
    """Minimum seconds of `fn()` over `reps` runs after `warmup` runs (the minimum is the least
    noisy estimate on a shared machine)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync()
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - start)
    return best


def time_step(backend, inputs) -> float:
    """Seconds of one training step of an op call on `backend`: the forward and both gradients,
    through the same kernels the op runs (for dense, the same code as a layer on the dense path)."""
    inputs = dataclasses.replace(inputs, state={})
    forward = getattr(backend, inputs.op + "_forward")
    backward = getattr(backend, inputs.op + "_backward")
    with torch.no_grad():
        out = forward(inputs)  # an op with several outputs takes a gradient for each
        grad = tuple(map(torch.ones_like, out)) if isinstance(out, tuple) else torch.ones_like(out)

    def step():
        forward(inputs)
        backward(inputs, grad, True, True)

    return time_call(step, inputs.device)
