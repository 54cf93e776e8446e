"""How fast the machine is at the moment: three short probes timed at the start and at the end of a
benchmark session, printed above its table.

The development machines change speed within minutes (a neighbour on the host): one U-Net step
took ~350 ms and ~450 ms within the hour, and the slow state costs the load-bound sparse kernels
more than the dense GEMMs, so it moves the speed-ups too (bench/NOTES.md). The probes say which
state a table was taken in: a dense GEMM (compute bound), a large copy (memory bound) and a native
sparse conv forward (load bound, as the sparse kernels are), each the best of a few calls.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ebsparse.backends.timing import time_call

GEMM_SIZE = 1024
COPY_MB = 64
# A 256-channel 3x3 layer of the CIFAR-10 U-Net at ERK 0.9's density, batch 8, 16x16 maps.
CONV_CHANNELS, CONV_SIZE, CONV_DENSITY = 256, 16, 0.05


def _best_seconds(fn) -> float:
    return time_call(fn, torch.device("cpu"), reps=10, warmup=2)


def _sparse_conv_gflops() -> float | None:
    from ebsparse.backends.extension import extension_error
    from ebsparse.formats.index import pattern_tensors

    if extension_error() is not None:
        return None
    generator = torch.Generator().manual_seed(0)
    c, s = CONV_CHANNELS, CONV_SIZE
    mask = torch.rand(c, c, 3, 3, generator=generator) < CONV_DENSITY
    weight = torch.randn(c, c, 3, 3, generator=generator) * mask
    row_ptr, col_idx, _, _ = pattern_tensors(mask)
    x = torch.randn(8, c, s, s, generator=generator)
    seconds = _best_seconds(lambda: torch.ops.ebsparse.csr_conv2d(x, weight, None, row_ptr, col_idx, [1, 1], [1, 1],
                                                                  [1, 1]))
    return 2 * int(mask.sum()) * 8 * s * s / seconds / 1e9


def probe() -> dict[str, float | None]:
    """{"gemm_gflops", "copy_gbs", "sparse_conv_gflops"} now (the last None without the extension)."""
    n = GEMM_SIZE
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = 2 * n**3 / _best_seconds(lambda: torch.mm(a, b)) / 1e9
    src = torch.ones(COPY_MB * 2**20 // 4)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src)) / 1e9  # bytes read + written
    return {"gemm_gflops": gemm, "copy_gbs": copy, "sparse_conv_gflops": _sparse_conv_gflops()}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for the table's header: figures differ by core."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(start: dict, end: dict) -> str:
    """One line: each probe at the start and at the end of the session."""
    def pair(key: str, unit: str) -> str:
        values = [d.get(key) for d in (start, end)]
        if any(v is None for v in values):
            return "n/a"
        return f"{values[0]:.0f} / {values[1]:.0f} {unit}"

    return (f"machine probes at start / end: dense GEMM {GEMM_SIZE}^3 {pair('gemm_gflops', 'GFLOP/s')}, "
            f"{COPY_MB} MB copy {pair('copy_gbs', 'GB/s')}, native sparse conv {CONV_CHANNELS} ch 3x3 "
            f"{CONV_SIZE}x{CONV_SIZE} at {CONV_DENSITY:.0%} {pair('sparse_conv_gflops', 'GFLOP/s')} (useful)")
