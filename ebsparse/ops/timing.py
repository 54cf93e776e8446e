"""Wall-clock timing used by automatic backend choice (never by tests)."""

from __future__ import annotations

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
