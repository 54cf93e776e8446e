"""The README's Python examples run as written.

Each block runs in a fresh interpreter from the repository root, so an example cannot lean on a
module that another test imported (``import ebsparse`` followed by ``ebsparse.s2s...`` must work on
its own). A block preceded by ``<!-- readme-test: skip -->`` is only compiled.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = "<!-- readme-test: skip -->"

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r'`python -c "([^"`]+)"`')


def _blocks() -> list[tuple[int, str, bool]]:
    text = README.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip().splitlines()
        out.append((line, m.group(1), bool(before) and before[-1].strip() == SKIP))
    return out


def _inline() -> list[str]:
    return _INLINE.findall(README.read_text())


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_readme_has_python_examples():
    assert _blocks(), "README.md has no ```python block; this test would check nothing"


@pytest.mark.parametrize("line,code,skip", _blocks(), ids=[f"line{b[0]}" for b in _blocks()])
def test_readme_python_block_runs(line, code, skip):
    compile(code, f"README.md:{line}", "exec")
    if skip:
        pytest.skip(f"README.md:{line} is marked {SKIP}")
    result = _run(code)
    assert result.returncode == 0, f"README.md:{line} failed:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("code", _inline())
def test_readme_python_dash_c_runs(code):
    result = _run(code)
    assert result.returncode == 0, f"README.md `python -c {code!r}` failed:\n{result.stderr[-3000:]}"


def test_import_ebsparse_stays_light_and_subpackages_load_on_access():
    result = _run("import sys, ebsparse\n"
                  "heavy = [m for m in ('ebsparse.s2s', 'ebsparse.diffusion', 'ebsparse.earlybird', 'ebsparse.pruning')"
                  " if m in sys.modules]\n"
                  "assert not heavy, heavy\n"
                  "assert ebsparse.s2s.RigL.__name__ == 'RigL' and 's2s' in dir(ebsparse)\n"
                  "try:\n    ebsparse.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
                  "else:\n    raise SystemExit('no AttributeError')\n")
    assert result.returncode == 0, result.stderr[-3000:]
