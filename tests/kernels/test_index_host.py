"""The CUDA kernels' index arithmetic (kernels/index.cuh, __host__ __device__ functions) run on the
host: the 2:4 code/decode and selection rules, grid tiling."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("c++") is None, reason="no host C++ compiler")
def test_index_functions_on_the_host(tmp_path):
    exe = tmp_path / "index_host_test"
    build = subprocess.run(["c++", "-std=c++17", "-Wall", "-Werror", "-I", str(ROOT / "kernels"),
                            str(ROOT / "tests" / "kernels" / "index_host_test.cpp"), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
