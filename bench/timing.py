"""Paired timing through pytest-benchmark, and the speed-up table the session ends with.

Timing here drifts by 20-50% between processes and between minutes, so a speed-up is only worth
something when the provider and its baseline are timed alternately in the same rounds: a noisy
stretch then hits both alike. `paired` does that inside `benchmark.pedantic`: the baseline runs
(timed by us) in pedantic's untimed `setup` before every round of the provider (timed by
pytest-benchmark), so the rounds go baseline, provider, baseline, provider, ... The provider's
statistics are pytest-benchmark's own (`--benchmark-json`, `--benchmark-autosave`,
`--benchmark-compare` see them); the baseline's minimum and the speed-up (baseline minimum /
provider minimum) go into `benchmark.extra_info` and into `ROWS` for the summary table.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Row:
    group: str
    provider: str
    seconds: float  # the provider's minimum over the rounds
    baseline: str  # what the speed-up is against ("dense", "reference")
    baseline_seconds: float  # the baseline's minimum over the same, interleaved rounds
    gflop: float  # useful GFLOP of one call (kept weights only); 0 where it means nothing
    extra: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.baseline_seconds / self.seconds


ROWS: list[Row] = []


def paired_speedup_median(baseline: list[float], provider: list[float]) -> float:
    """Median over rounds of baseline / provider, each round's two times taken back to back.

    The headline speed-up is min / min; this one asks each round on its own. On a machine whose
    state moves within minutes (a neighbour's load slows the load-bound sparse kernels more than
    dense GEMMs) the two minima may come from different states, a round's pair hardly ever does."""
    if len(baseline) != len(provider) or not provider:
        raise ValueError(f"paired_speedup_median: expected two equally long, non-empty lists of round times, "
                         f"got {len(baseline)} and {len(provider)}")
    return statistics.median(b / p for b, p in zip(baseline, provider))


def synchronized(fn, device: torch.device | str):
    """`fn` followed by a CUDA synchronize when `device` is a GPU, so a timer sees the kernels' time."""
    if torch.device(device).type != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize()
    return call


def paired(benchmark, step, baseline, *, group: str, provider: str, rounds: int, gflop: float = 0.0,
           baseline_name: str = "dense", extra: dict | None = None, warmup: int = 1) -> Row | None:
    """Time `step` with `benchmark.pedantic`, `baseline` alternately with it; record the row.

    Returns None under `--benchmark-disable` (each callable then runs once, untimed)."""
    baseline_times: list[float] = []

    def timed_baseline():
        start = time.perf_counter()
        baseline()
        baseline_times.append(time.perf_counter() - start)

    benchmark.group = group
    benchmark.pedantic(step, setup=timed_baseline, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if benchmark.stats is None:
        return None
    seconds = benchmark.stats.stats.min
    # The spread says how far a row's minimum can be trusted: median over minimum, for both sides.
    spread = {"rounds": rounds, "median_ms": 1e3 * benchmark.stats.stats.median,
              "baseline_median_ms": 1e3 * statistics.median(baseline_times[-rounds:]),
              "speedup_paired_median": paired_speedup_median(baseline_times[-rounds:],
                                                             list(benchmark.stats.stats.data[-rounds:]))}
    row = Row(group, provider, seconds, baseline_name, min(baseline_times[-rounds:]), gflop,
              {**spread, **(extra or {})})
    benchmark.extra_info.update(
        provider=provider, baseline=baseline_name, baseline_min_s=row.baseline_seconds,
        speedup_vs_baseline=row.speedup, useful_gflop=gflop,
        useful_gflops=gflop / seconds if gflop else None, **row.extra)
    ROWS.append(row)
    return row


def summary_table(rows: list[Row]) -> str:
    """Markdown: one line per row, rows of a group together in the order the groups first ran."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    lines = ["| group | provider | ms | baseline | baseline ms (paired) | speed-up | useful GFLOP/s | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for group, members in groups.items():
        for r in members:
            rate = f"{r.gflop / r.seconds:.1f}" if r.gflop else ""
            notes = ", ".join(f"{k}={_number(v)}" if isinstance(v, float) else f"{k}={v}" for k, v in r.extra.items())
            lines.append(f"| {group} | {r.provider} | {_number(r.seconds * 1e3)} | {r.baseline} | "
                         f"{_number(r.baseline_seconds * 1e3)} | {r.speedup:.2f}x | {rate} | {notes} |")
    return "\n".join(lines)


def _number(value: float) -> str:
    """Three significant digits without an exponent: 0.0123, 1.23, 123, 12345."""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
