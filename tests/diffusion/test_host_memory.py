"""ebsparse.diffusion.host_memory: freed activation memory stays in the process (no page faults when
the next step allocates it again), and the trainer sets that policy on the CPU.

The malloc policy is process-wide, so each policy check runs in a fresh interpreter."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from ebsparse.diffusion import trainer as trainer_module
from ebsparse.diffusion.host_memory import ENV, glibc_mallopt, keep_freed_memory

glibc = pytest.mark.skipif(glibc_mallopt() is None, reason="the policy is glibc's mallopt")

# Faults of 20 allocate-fill-free cycles of an 8 MiB tensor (2048 pages), first under a policy that
# maps every block above 1 MiB anew (the case the module exists for), then after keep_freed_memory.
SCRIPT = textwrap.dedent("""
    import json, resource, torch
    from ebsparse.diffusion.host_memory import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, glibc_mallopt, keep_freed_memory

    mallopt = glibc_mallopt()
    mallopt(M_MMAP_THRESHOLD, 1 << 20)  # blocks over 1 MiB are mapped per allocation
    mallopt(M_TRIM_THRESHOLD, 0)        # the heap top is trimmed at once

    def faults():
        torch.empty(2 << 20).fill_(1.0)  # the first cycle may grow the heap
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            torch.empty(2 << 20).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    returned = faults()
    applied = keep_freed_memory()
    print(json.dumps({"applied": applied, "returned": returned, "kept": faults()}))
""")


def _run(env_value=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    result = _run()
    assert result["applied"] is True
    assert result["returned"] >= 20 * 2048 * 0.9, result  # the measurement sees the faults it should
    assert result["kept"] <= 20 * 2048 * 0.25, result  # at most a few cycles grow the heap


@glibc
def test_the_environment_variable_leaves_the_policy_alone():
    result = _run("0")
    assert result["applied"] is False
    assert result["kept"] >= 20 * 2048 * 0.9, result


def test_the_trainer_sets_the_policy_on_the_cpu(tiny_digits_config, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(True) or True)
    trainer_module.Trainer(tiny_digits_config, tmp_path / "run")
    assert calls == [True]


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert keep_freed_memory() is False
