"""Shapes and round counts of the benchmarks, with the quick mode that checks them in seconds.

EBSPARSE_BENCH_QUICK=1 shrinks every shape to a few dozen features/channels (the U-Nets to a
quarter of their width, batch 2) and the rounds to 3:
the numbers mean nothing then, but every benchmark, the pytest-benchmark plumbing and the summary
table run end to end. EBSPARSE_BENCH_ROUNDS sets the paired rounds of every row;
EBSPARSE_BENCH_THREADS the torch threads (2 by default, as the kernels were tuned);
EBSPARSE_BENCH_RESULTS the folder of the summary table (bench/results by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

QUICK = os.environ.get("EBSPARSE_BENCH_QUICK", "0") not in ("", "0")


def rounds(default: int) -> int:
    """Paired rounds of a row: EBSPARSE_BENCH_ROUNDS, else 3 in quick mode, else `default`."""
    if "EBSPARSE_BENCH_ROUNDS" in os.environ:
        return int(os.environ["EBSPARSE_BENCH_ROUNDS"])
    return min(default, 3) if QUICK else default


def threads() -> int:
    return int(os.environ.get("EBSPARSE_BENCH_THREADS", "2"))


def results_dir() -> Path:
    """Where the summary table and the step breakdowns go: EBSPARSE_BENCH_RESULTS, else bench/results."""
    return Path(os.environ.get("EBSPARSE_BENCH_RESULTS") or Path(__file__).parent / "results")


@dataclass(frozen=True)
class LinearShape:
    batch: int
    in_features: int
    out_features: int

    def __str__(self) -> str:
        return f"b{self.batch}-{self.in_features}to{self.out_features}"


@dataclass(frozen=True)
class ConvShape:
    batch: int
    in_channels: int
    out_channels: int
    size: int  # input height = width
    kernel: int
    padding: int

    @property
    def output_pixels(self) -> int:
        return (self.size + 2 * self.padding - self.kernel + 1) ** 2

    def __str__(self) -> str:
        return (f"b{self.batch}-{self.in_channels}to{self.out_channels}-{self.size}px-"
                f"{self.kernel}x{self.kernel}p{self.padding}")


# The kernel issue's shapes: linear 1024->1024 on a (1024, 1024) input; conv 256->256 3x3 pad 1 on
# (8, 256, 32, 32).
LINEAR_SHAPES = [LinearShape(64, 64, 64)] if QUICK else [LinearShape(1024, 1024, 1024)]
CONV_SHAPES = [ConvShape(2, 16, 16, 8, 3, 1)] if QUICK else [ConvShape(8, 256, 256, 32, 3, 1)]

# Kept-weight patterns: the fraction of weights pruned (unstructured, random mask) or "2:4".
SPARSITIES = [0.0, 0.5, 0.75, 0.9, 0.95, "2:4"]
# The patterns of the rows that decide the kernels' worth (kernel phases, dense upstream gradient).
SPARSE_SPARSITIES = [0.9, 0.95, "2:4"]

# Rounds of each paired timing. A 150 ms conv step on a shared 2-core machine needs more than a
# dozen rounds before the two minima settle (dense conv's step time is bimodal here, and a window
# that catches the fast mode for one side only misreports the ratio by 20%). The peers are several
# times slower than dense (or far faster), so a few rounds tell their story.
LAYER_ROUNDS = 25
PEER_ROUNDS = 3


# The U-Nets of the model-level benchmarks: the CIFAR-10 width, or a quarter of it in quick mode.
UNET_CHANNELS = 32 if QUICK else 128
UNET_NORM_GROUPS = 8 if QUICK else 32
UNET_BATCH = 2 if QUICK else 8


def pattern_id(sparsity) -> str:
    return "2:4" if sparsity == "2:4" else f"sparsity-{sparsity}"
