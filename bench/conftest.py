"""Benchmarks run only with `pytest bench/ --benchmark`; at the end they print a speed-up table.

Each benchmark records (group, provider, seconds, useful GFLOP) in `RESULTS`; the summary divides
the dense time measured alternately with the provider (when the benchmark pairs them), else
the fastest dense provider's time of the same group (``dense`` or a ``dense-<variant>`` such as
``dense-channels_last``) by each provider's time, so a variant never looks faster by beating a slow
dense baseline. The table is also written to
`bench/results/<name>.md`.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

RESULTS: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the ebsparse benchmarks (they are skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        torch.set_num_threads(int(os.environ.get("EBSPARSE_BENCH_THREADS", "2")))
        return
    skip = pytest.mark.skip(reason="benchmarks run only with --benchmark")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def record():
    """record(group, provider, seconds, gflop, baseline=None): store one row for the summary table.
    ``baseline``: dense seconds measured alternately with this provider (see
    ``bench.providers.paired_minimum``); the row's speed-up uses it instead of the group's dense row."""

    def _record(group: str, provider: str, seconds: float, gflop: float, baseline: float | None = None) -> None:
        RESULTS[group][provider] = (seconds, gflop, baseline)

    return _record


def speedup_table() -> str:
    lines = ["| group | provider | ms | dense ms | speed-up vs dense | useful GFLOP/s |", "|---|---|---|---|---|---|"]
    for group, rows in RESULTS.items():
        dense = min((s for p, (s, _, _) in rows.items() if p == "dense" or p.startswith("dense-")), default=float("nan"))
        for provider, (seconds, gflop, baseline) in rows.items():
            base = dense if baseline is None else baseline
            lines.append(f"| {group} | {provider} | {seconds * 1e3:.2f} | {base * 1e3:.2f} | {base / seconds:.2f}x | "
                         f"{gflop / seconds:.1f} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    table = speedup_table()
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    terminalreporter.write_sep("=", "ebsparse speed-up (minimum over rounds, forward + backward)")
    terminalreporter.write_line(header)
    terminalreporter.write_line(table)
    out_dir = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write(f"{header}\n\n{table}\n")
