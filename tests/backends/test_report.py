"""`ebsparse info` and backends.report(): every op x backend row, with reasons where unavailable."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ebsparse
from ebsparse.backends import availability
from ebsparse.backends.extension import extension_error
from ebsparse.cli import main


def test_info_command_prints_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("dense", "native", "triton"):
        assert name in out
    assert "extension ebsparse._C" in out


def test_unavailable_rows_carry_reasons():
    rows = availability()
    assert {r["backend"] for r in rows} >= {"dense", "native", "triton"}
    dense = [r for r in rows if r["backend"] == "dense"]
    assert all(not r["reasons"] for r in dense)
    native_bf16 = [r for r in rows if r["backend"] == "native" and r["dtype"] == "bfloat16"
                   and r["op"] in ("linear", "conv2d")]
    assert native_bf16 and all("bfloat16" in " ".join(r["reasons"]) for r in native_bf16)
    triton_bf16 = [r for r in rows if r["backend"] == "triton" and r["dtype"] == "bfloat16"
                   and r["op"] in ("linear", "conv2d")]
    assert {r["op"] for r in triton_bf16} == {"linear", "conv2d"}
    assert not any("bfloat16" in " ".join(r["reasons"]) for r in triton_bf16)  # it has bf16 kernels
    sparse_tc_fp32 = [r for r in rows if r["backend"] == "semi_structured" and r["dtype"] == "float32"
                      and r["op"] == "linear"]
    assert sparse_tc_fp32 and all("float32" in " ".join(r["reasons"]) for r in sparse_tc_fp32)


def test_missing_op_is_a_reason():
    from ebsparse.backends import Backend

    class LinearOnly(Backend):
        name = "linear-only"
        ops = frozenset({"linear"})

    assert LinearOnly().unavailable_reasons("linear", torch.device("cpu"), torch.float32) == []
    assert any("no conv2d kernel" in why
               for why in LinearOnly().unavailable_reasons("conv2d", torch.device("cpu"), torch.float32))


def test_auto_choice_is_cached_and_never_slower_than_dense(monkeypatch):
    """The selector keeps dense unless a sparse backend measured faster by the margin."""
    from ebsparse.backends import select

    select.clear()
    times = {"dense": 1.0, "native": select.MARGIN + 0.01}
    choice = select.choose("linear", torch.device("cpu"), torch.float32, lambda name: times[name], ("k1",))
    assert choice == "dense"
    times = {"dense": 1.0, "native": 0.5}
    assert select.choose("linear", torch.device("cpu"), torch.float32, lambda name: times[name], ("k2",)) == "native"
    # cached: a new measurement is not taken for a known key
    assert select.choose("linear", torch.device("cpu"), torch.float32, lambda name: 1 / 0, ("k2",)) == "native"
    assert ebsparse.backends.choices()


def test_close_calls_are_measured_again(monkeypatch):
    """A sparse backend whose first rounds land between the margin and dense (a noisy start) is
    measured again and chosen when its later rounds show it faster by the margin; one that stays
    above the margin keeps dense."""
    from ebsparse.backends import select

    select.clear()
    calls = {"dense": 0, "native": 0}

    def noisy_start(name):
        calls[name] += 1
        if name == "dense":
            return 1.0
        return 0.95 if calls[name] <= select.ROUNDS else 0.8

    assert select.choose("linear", torch.device("cpu"), torch.float32, noisy_start, ("k4",)) == "native"
    assert calls["native"] > select.ROUNDS
    steady = {"dense": 1.0, "native": 0.95}
    assert select.choose("linear", torch.device("cpu"), torch.float32, steady.get, ("k5",)) == "dense"
    select.clear()


def test_autotune_cache_file_round_trip(tmp_path, monkeypatch):
    from ebsparse.backends import select

    path = tmp_path / "auto.json"
    monkeypatch.setenv("EBSPARSE_AUTOTUNE_CACHE", str(path))
    select.clear()
    select.choose("conv2d", torch.device("cpu"), torch.float32, {"dense": 1.0, "native": 0.1}.get, ("k3",))
    assert path.exists()
    select.clear()
    monkeypatch.setattr(select, "_loaded_path", None)
    assert select.choose("conv2d", torch.device("cpu"), torch.float32, lambda name: 1 / 0, ("k3",)) == "native"
    select.clear()


def test_every_op_is_in_the_report():
    """The 2:4 ops dispatch through the same registry, so the report lists them per backend."""
    ops = {(r["op"], r["backend"]) for r in availability()}
    for op in ("prune_2_4", "compress_2_4", "decompress_2_4"):
        assert (op, "dense") in ops and (op, "native") in ops and (op, "triton") in ops


def test_backend_resolved_once_per_call_and_once_per_shape_in_a_module(monkeypatch):
    """The public op resolves once per call; a module once per input shape, then never again."""
    from ebsparse.backends import dispatch

    calls = []
    real = dispatch.resolve
    monkeypatch.setattr(dispatch, "resolve", lambda backend, inputs: calls.append(inputs.op) or real(backend, inputs))
    x, w, mask = torch.randn(3, 8), torch.randn(4, 8, requires_grad=True), torch.rand(4, 8) < 0.5
    ebsparse.ops.sparse_linear(x, w, None, mask, backend="dense").sum().backward()
    assert calls == ["linear"]
    layer = ebsparse.SparseLinear(8, 4, density=0.5, backend="dense")
    calls.clear()
    for _ in range(3):
        layer(x).sum().backward()
    assert calls == ["linear"]
    layer(torch.randn(5, 8))
    assert calls == ["linear", "linear"]



@pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))
def test_import_ebsparse_loads_the_native_ops():
    """The README's `torch.ops.ebsparse.cpu_capability()` works right after `import ebsparse` (a fresh
    process: nothing else has asked for the extension yet)."""
    code = "import ebsparse, torch; print(torch.ops.ebsparse.cpu_capability())"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("avx2", "avx512")
