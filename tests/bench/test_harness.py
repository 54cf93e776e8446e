"""The benchmark harness (bench/): rows reach pytest-benchmark's JSON with the paired speed-up in
`extra_info`, the summary table is written, and without --benchmark nothing is timed.

Each test runs one tiny benchmark selection in a subprocess (EBSPARSE_BENCH_QUICK), as a user would."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run_bench(tmp_path, *args):
    env = dict(os.environ, EBSPARSE_BENCH_QUICK="1", EBSPARSE_BENCH_ROUNDS="2",
               EBSPARSE_BENCH_RESULTS=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "pytest", "bench/test_twofour.py", "-q", "-p", "no:cacheprovider",
                           "-k", "ebsparse-native and prune", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_rows_reach_benchmark_json_with_the_paired_speedup(tmp_path):
    out = tmp_path / "out.json"
    result = _run_bench(tmp_path, "--benchmark", f"--benchmark-json={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["benchmarks"]
    assert len(rows) == 2  # the two quick shapes
    for row in rows:
        info = row["extra_info"]
        assert info["provider"] == "ebsparse-native" and info["baseline"] == "reference"
        assert row["stats"]["rounds"] == 2
        assert info["speedup_vs_baseline"] == pytest.approx(info["baseline_min_s"] / row["stats"]["min"])
        assert row["group"].startswith("2:4 prune ")
    table = (tmp_path / "latest.md").read_text()
    assert table.count("| ebsparse-native |") == 2 and "| reference |" in table
    assert "machine probes at start / end: dense GEMM" in table  # which state of the machine the rows saw
    for row in rows:  # a round's own speed-up, its baseline and provider timed back to back
        assert row["extra_info"]["speedup_paired_median"] > 0


def test_without_the_flag_nothing_runs(tmp_path):
    result = _run_bench(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout and "passed" not in result.stdout
    assert not (tmp_path / "latest.md").exists()


def test_phase_rows_run_in_a_fresh_process():
    """bench.phases (the kernel-phase rows and `python -m bench.compare_builds`) calls the native
    kernels in a process where importing ebsparse has not loaded the extension."""
    code = ("from bench.phases import conv_calls, linear_calls\n"
            "for calls in (linear_calls, conv_calls):\n"
            "    sparse, dense, _ = calls(0.9)\n"
            "    assert sparse['forward']().shape == dense['forward']().shape\n")
    env = dict(os.environ, EBSPARSE_BENCH_QUICK="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_block_phase_rows_match_dense_in_a_fresh_process():
    """bench.block_phases times what it claims: each block phase gives the dense call's result (the
    dense calls run on the masked weight), in a process that has not loaded the extension."""
    code = ("import torch\n"
            "from bench.block_phases import calls\n"
            "from bench.phases import native_kernels\n"
            "def result(out):  # the one gradient a backward call was asked for\n"
            "    if isinstance(out, torch.Tensor): return out\n"
            "    return next(t for t in out if t is not None and t.numel())\n"
            "for kind in ('linear', 'conv'):\n"
            "    sparse, dense, mask = calls(kind, (32, 32), 0.9, native_kernels())\n"
            "    for phase in ('forward', 'grad-input', 'grad-weight'):\n"
            "        want = result(dense[phase]())\n"
            "        want = want * mask if phase == 'grad-weight' else want\n"
            "        torch.testing.assert_close(result(sparse[phase]()), want, atol=2e-3, rtol=1e-3)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_block_cpu_time_paired_needs_a_revision():
    """`bench.block_cpu_time --paired N` compares against another build: without --against it stops
    with a message naming the missing option instead of timing nothing."""
    result = subprocess.run([sys.executable, "-m", "bench.block_cpu_time", "--paired", "3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--paired needs --against" in result.stderr
