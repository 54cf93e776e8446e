"""tools/gpu_check.sh and bench/gpu_check.py are ready for a GPU: the script parses, and without one
both refuse with a clear message instead of reporting numbers."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "tools" / "gpu_check.sh")]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: tools/gpu_check.sh runs for real")
def test_without_a_gpu_both_refuse(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    script = subprocess.run([str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 2 and "no CUDA GPU" in script.stderr
    bench = subprocess.run([sys.executable, "-m", "bench.gpu_check", str(tmp_path / "t.md")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert bench.returncode != 0 and "needs a CUDA GPU" in bench.stderr
    assert not (tmp_path / "t.md").exists()
