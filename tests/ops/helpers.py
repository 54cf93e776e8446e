"""Shared by the op tests: backends to test, proof of which backend ran, tolerances."""

import contextlib
import os

import pytest
import torch

import ebsparse  # noqa: F401  (registers backends)
from ebsparse.backends import registered_backends, trace

# The device the op tests that take it run on: CUDA where present (tools/gpu_check.sh), else the CPU;
# EBSPARSE_TEST_DEVICE=cpu|cuda overrides.
DEVICE = torch.device(os.environ.get("EBSPARSE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def backend_params(op: str, device: torch.device, dtype: torch.dtype) -> list:
    """Every registered backend, as a pytest param; one that cannot run `op` here (not built, no
    kernel for the dtype, Triton without its interpreter) is skipped with its reasons, not dropped."""
    params = []
    for name, backend in registered_backends().items():
        reasons = backend.unavailable_reasons(op, device, dtype)
        marks = [pytest.mark.skip(reason=f"{name}: " + "; ".join(reasons))] if reasons else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def usable_backends(op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Names of the backends that can run `op` here."""
    return [name for name, b in registered_backends().items() if not b.unavailable_reasons(op, device, dtype)]


@contextlib.contextmanager
def runs_on(backend: str, op: str, phases=("forward",)):
    """Fail unless every kernel call of `op` in the block ran on `backend`, and each of `phases`
    ran at least once."""
    with trace() as calls:
        yield calls
    ran = [(phase, name) for o, phase, name in calls if o == op]
    assert ran, f"no {op} kernel ran"
    assert {name for _, name in ran} == {backend}, f"{op} ran on {ran}, expected {backend}"
    missing = set(phases) - {phase for phase, _ in ran}
    assert not missing, f"{op}: phases {missing} did not run (ran {ran})"


def tolerance(dtype: torch.dtype, scale: float) -> dict:
    """Absolute/relative error allowed against the fp64 reference, scaled by the sum magnitude."""
    eps = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    return dict(atol=eps * max(1.0, scale), rtol=eps * 10)


def assert_named_close(names, got, expected, dtype: torch.dtype, tol: dict) -> None:
    """Each output in `got` has `dtype`, the shape of its fp64 reference in `expected` and its values
    within `tol`; a failure names the output."""
    for name, out, ref in zip(names, got, expected, strict=True):
        assert out.dtype == dtype and out.shape == ref.shape, name
        torch.testing.assert_close(out.double(), ref, **tol, msg=lambda m, name=name: f"{name}: {m}")


_IN_PROCESS = """
import sys, torch, ebsparse
from safetensors.torch import load_file, save_file
inputs, outputs = load_file(sys.argv[1]), {}
assert torch.ops.ebsparse.cpu_capability() == sys.argv[3], torch.ops.ebsparse.cpu_capability()
"""


def run_with_capability(path: str, call: str, capability: str = "avx2") -> None:
    """Load the file `path` as module `m` in a fresh interpreter whose CPU kernels use `capability`
    (EBSPARSE_CPU_CAPABILITY: the instruction set is chosen once per process) and evaluate `call`
    there (e.g. ``"m.check_kernels(m.KERNEL_CASES)"``). Raises with its stderr if it fails."""
    import subprocess
    import sys

    code = ("import importlib.util as u; s = u.spec_from_file_location('m', %r); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); %s" % (os.path.abspath(path), call))
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, EBSPARSE_CPU_CAPABILITY=capability),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def outputs_with_capability(code: str, inputs: dict, tmp_path, capability: str = "avx2") -> dict:
    """Run `code` in a fresh interpreter whose CPU kernels use `capability` (EBSPARSE_CPU_CAPABILITY:
    the instruction set is chosen once per process): it reads the dict `inputs` and fills the dict
    `outputs` (name -> tensor), both moved through safetensors files. Raises with its stderr if it fails."""
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    src, dst = str(tmp_path / "inputs.safetensors"), str(tmp_path / "outputs.safetensors")
    save_file({k: v.detach().contiguous() for k, v in inputs.items()}, src)
    save = "\nsave_file({k: v.detach().contiguous() for k, v in outputs.items()}, sys.argv[2])\n"
    program = _IN_PROCESS + code + save
    run = subprocess.run([sys.executable, "-c", program, src, dst, capability], capture_output=True, text=True,
                         env=dict(os.environ, EBSPARSE_CPU_CAPABILITY=capability))
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(dst)
