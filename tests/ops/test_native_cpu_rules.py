"""The two process-wide rules of the native CPU library (csrc/cpu): one instruction-set switch
(EBSPARSE_CPU_CAPABILITY, reported by torch.ops.ebsparse.cpu_capability) and one check of a
pattern's values, the same for every conv and linear op."""

import os
import subprocess
import sys

import pytest
import torch

try:
    import ebsparse._C  # noqa: F401  (registers torch.ops.ebsparse)

    _BUILD_ERROR = None
except ImportError as error:
    _BUILD_ERROR = str(error)

pytestmark = pytest.mark.skipif(_BUILD_ERROR is not None, reason=f"ebsparse._C not built: {_BUILD_ERROR}")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AVX512_FLAGS = ("avx512f", "avx512vl", "avx512bw", "avx512dq")


def _cpu_has_avx512() -> bool:
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    return all(flag in flags for flag in AVX512_FLAGS)


def _run_capability(**env_vars: str) -> subprocess.CompletedProcess:
    """torch.ops.ebsparse.cpu_capability() and one conv forward, in a fresh process (the capability
    is chosen once per process) with exactly these of the switch's variables set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("EBSPARSE_CPU_CAPABILITY", "EBSPARSE_CONV_AVX2", "EBSPARSE_CPU_NO_AVX512")}
    env.update(env_vars)
    code = ("import torch, ebsparse._C\n"
            "x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)\n"
            "rp, ci = torch.tensor([0, 1, 1, 2], dtype=torch.int32), torch.tensor([0, 17], dtype=torch.int32)\n"
            "torch.ops.ebsparse.csr_conv2d(x, w, None, rp, ci, [1, 1], [1, 1], [1, 1])\n"
            "print(torch.ops.ebsparse.cpu_capability())\n")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)


def test_capability_defaults_to_the_best_the_cpu_has():
    run = _run_capability()
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == ("avx512" if _cpu_has_avx512() else "avx2")


def test_capability_avx2_forced():
    run = _run_capability(EBSPARSE_CPU_CAPABILITY="avx2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "avx2"


def test_capability_avx512_asked():
    run = _run_capability(EBSPARSE_CPU_CAPABILITY="avx512")
    if _cpu_has_avx512():
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip() == "avx512"
    else:
        assert run.returncode != 0 and "this CPU lacks AVX-512" in run.stderr


@pytest.mark.parametrize("value", ["avx-512", "AVX2 ", "sse", "1"])
def test_capability_unknown_value_is_an_error(value):
    run = _run_capability(EBSPARSE_CPU_CAPABILITY=value)
    assert run.returncode != 0
    assert "EBSPARSE_CPU_CAPABILITY: expected avx2 or avx512" in run.stderr


@pytest.mark.parametrize("old", ["EBSPARSE_CONV_AVX2", "EBSPARSE_CPU_NO_AVX512"])
def test_capability_old_variables_are_refused(old):
    """The variables that forced AVX2 before are refused, not ignored (else a script setting one
    would time the AVX-512 kernels while believing it times AVX2)."""
    run = _run_capability(**{old: "1"})
    assert run.returncode != 0
    assert f"{old} is no longer read: set EBSPARSE_CPU_CAPABILITY=avx2" in run.stderr


def test_report_names_the_capability_that_runs():
    env = dict(os.environ, EBSPARSE_CPU_CAPABILITY="avx2")
    code = "import ebsparse.backends as b; print(b.report(print_it=False))"
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "CPU capability of the native kernels (EBSPARSE_CPU_CAPABILITY): avx2" in run.stdout


# ---- one check rule for the pattern's values ---------------------------------------------------

ONE = [1, 1]


def _op_calls():
    """(name, rows, cols, call(ptr, idx)) for every native CPU op that reads a pattern: rows and
    cols of the pattern it takes (CSR for forward and grad-weight, CSC for grad-input)."""
    ops = torch.ops.ebsparse
    x, w, dy = torch.randn(3, 8), torch.randn(4, 8), torch.randn(3, 4)
    xc, wc, dyc = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(1, 3, 5, 5)
    return [
        ("csr_linear", 4, 8, lambda p, i: ops.csr_linear(x, w, None, p, i)),
        ("csr_linear_grad_input", 8, 4, lambda p, i: ops.csr_linear_grad_input(dy, w, p, i)),
        ("csr_linear_grad_weight", 4, 8, lambda p, i: ops.csr_linear_grad_weight(dy, x, p, i)),
        ("csr_linear_backward", 4, 8, lambda p, i: ops.csr_linear_backward(dy, x, w, p, i, True, True)),
        ("csr_conv2d", 3, 18, lambda p, i: ops.csr_conv2d(xc, wc, None, p, i, ONE, ONE, ONE)),
        ("csr_conv2d_grad_input", 18, 3,
         lambda p, i: ops.csr_conv2d_grad_input(dyc, wc, p, i, list(xc.shape), ONE, ONE, ONE)),
        ("csr_conv2d_grad_weight", 3, 18,
         lambda p, i: ops.csr_conv2d_grad_weight(dyc, xc, p, i, list(wc.shape), ONE, ONE, ONE)),
        ("csr_conv2d_grad_weight_bias", 3, 18,
         lambda p, i: ops.csr_conv2d_grad_weight_bias(dyc, xc, p, i, list(wc.shape), ONE, ONE, ONE)),
    ]


OP_NAMES = [name for name, *_ in _op_calls()] if _BUILD_ERROR is None else []


def _pattern(rows: int, row1: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A pattern whose only entries are `row1` in row 1."""
    ptr = [0, 0] + [len(row1)] * (rows - 1)
    return torch.tensor(ptr, dtype=torch.int32), torch.tensor(row1, dtype=torch.int32)


def _call(name):
    return next(entry for entry in _op_calls() if entry[0] == name)


@pytest.mark.parametrize("name", OP_NAMES)
def test_pattern_index_out_of_range_is_rejected(name):
    _, rows, cols, call = _call(name)
    with pytest.raises(RuntimeError, match=rf"idx: expected values in \[0, {cols}\), got {cols} at position 1"):
        call(*_pattern(rows, [0, cols]))


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("row1", [[2, 2], [2, 1]], ids=["repeated", "unsorted"])
def test_pattern_row_must_strictly_increase(name, row1):
    """A repeated index would count its weight twice (a silently wrong result), an unsorted row
    breaks the linear plan's position map."""
    _, rows, _, call = _call(name)
    with pytest.raises(RuntimeError, match="idx: expected strictly increasing values within row 1"):
        call(*_pattern(rows, row1))


@pytest.mark.parametrize("name", OP_NAMES)
def test_pattern_offsets_checked(name):
    _, rows, _, call = _call(name)
    ptr, idx = _pattern(rows, [0, 1])
    ptr[1], ptr[2] = 2, 1  # row 1 ends before it starts
    with pytest.raises(RuntimeError, match="ptr: expected non-decreasing values"):
        call(ptr, idx)
    ptr, idx = _pattern(rows, [0, 1])
    ptr[-1] = 1  # does not end at idx.numel()
    with pytest.raises(RuntimeError, match=r"ptr: expected to start at 0 and end at .*\.numel\(\) = 2"):
        call(ptr, idx)


@pytest.mark.parametrize("name", OP_NAMES)
def test_pattern_checked_again_after_an_in_place_edit(name):
    """A pattern that passed is remembered; editing it in place makes it new again."""
    _, rows, _, call = _call(name)
    ptr, idx = _pattern(rows, [0, 1])
    call(ptr, idx)
    idx[1] = 0
    with pytest.raises(RuntimeError, match="expected strictly increasing values"):
        call(ptr, idx)
