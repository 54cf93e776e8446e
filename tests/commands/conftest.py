"""The README's command lines, as written, for the tests of this folder.

:func:`readme_command` finds a line of the README's command block (```bash after "ebsparse info")
by its start and returns its arguments; a test runs it from a scratch folder that links the
repository's ``configs/`` (so relative paths as the README writes them work), appending only
small step counts. A README edit that breaks a command, or a CLI change that breaks the README,
fails here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: Small runs of configs/digits.yaml: appended after the README's own --set (the last one wins).
SMALL = ["--set", "training.steps=2", "--set", "training.batch_size=4", "--set", "training.log_every=1",
         "--set", "sampling.timesteps=3", "--set", "sampling.num_samples=4", "--no-progress", "--threads", "1"]


def _command_block() -> list[str]:
    text = README.read_text()
    start = text.index("```bash\nebsparse info")
    block = text[start + len("```bash\n"): text.index("```", start + 8)]
    return [line.split(" # ")[0].strip() for line in block.splitlines() if line.strip()]


def _lines(prefix: str) -> list[str]:
    block = _command_block()
    return [prefix] if prefix in block else [line for line in block if line.startswith(prefix)]


def readme_command(prefix: str) -> list[str]:
    """The arguments after ``ebsparse`` of the README command line that is ``prefix`` or, when none
    is, of the one line starting with it."""
    lines = _lines(prefix)
    assert len(lines) == 1, f"README's command block has {len(lines)} lines starting with {prefix!r}: {lines}"
    argv = shlex.split(lines[0])
    assert argv[0] == "ebsparse", lines[0]
    return argv[1:]


def readme_line(prefix: str) -> str:
    lines = _lines(prefix)
    assert len(lines) == 1, f"README's command block has {len(lines)} lines starting with {prefix!r}: {lines}"
    return lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch folder that looks like the repository root to a README command (configs/ linked)."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _cache_and_threads(isolated_cache, one_thread):
    yield
