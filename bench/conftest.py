"""Benchmarks run only with `pytest bench/ --benchmark`; every row is timed by pytest-benchmark's
`benchmark` fixture (so `--benchmark-json`, `--benchmark-autosave` and `--benchmark-compare` work),
paired with its baseline in interleaved rounds (bench/timing.py), and the session ends with a
speed-up table (under a line of machine probes taken at its start and end, bench/machine_probe.py),
also written to `bench/results/latest.md` (EBSPARSE_BENCH_RESULTS names another folder).

EBSPARSE_BENCH_QUICK=1 shrinks shapes and rounds to check the benchmarks run (bench/settings.py).
Every row runs under the malloc policy of `ebsparse train` (ebsparse/diffusion/host_memory.py: freed
activation memory is kept in the process; EBSPARSE_KEEP_FREED_MEMORY=0 leaves glibc's default).
"""

from __future__ import annotations


import pytest
import torch

from bench import machine_probe, settings
from bench.providers import PEERS
from bench.timing import ROWS, summary_table
from ebsparse.diffusion.host_memory import keep_freed_memory


_PROBE_AT_START = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the ebsparse benchmarks (they are skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--benchmark"):
        skip = pytest.mark.skip(reason="benchmarks run only with --benchmark")
        for item in items:
            item.add_marker(skip)
        return
    torch.set_num_threads(settings.threads())
    # The allocator policy `ebsparse train` runs under (a Trainer sets it on creation): set here for
    # the whole session, so no row's timing depends on whether a Trainer was made before it.
    keep_freed_memory()
    config.stash[_PROBE_AT_START] = machine_probe.probe()
    # The peers last (a stable sort keeps the rest in file order): their thread pools stay alive
    # and would disturb the rows timed after them.
    items.sort(key=lambda item: getattr(item, "callspec", None) is not None
               and item.callspec.params.get("provider") in PEERS)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not ROWS:
        return
    table = summary_table(ROWS)
    header = (f"{machine_probe.cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
              + (", QUICK mode (shapes and rounds shrunk: the numbers mean nothing)" if settings.QUICK else ""))
    if _PROBE_AT_START in config.stash:
        header += "\n" + machine_probe.describe(config.stash[_PROBE_AT_START], machine_probe.probe())
    terminalreporter.write_sep("=", "ebsparse speed-up vs the paired baseline (minimum over rounds)")
    terminalreporter.write_line(header)
    terminalreporter.write_line(table)
    out_dir = settings.results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.md").write_text(f"{header}\n\n{table}\n")
