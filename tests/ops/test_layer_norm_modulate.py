"""layer_norm_modulate (LayerNorm(x) * (1 + scale) + shift, DiT's adaLN modulation) on every backend
that runs here against the pure-PyTorch reference in fp64: hypothesis over shapes (odd channel
counts, one token, no tokens, one sample), fp32 and fp64, forward and all three gradients; gradcheck
in fp64; a constant row (variance 0); bad arguments named by the Python checks and by the kernel
ops; the AVX2 kernels in a process of their own (the instruction set is chosen once per process)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends.extension import extension_error
from ebsparse.ops import layer_norm_modulate, layer_norm_modulate_reference
from tests.ops.helpers import backend_params, outputs_with_capability, runs_on

CPU = torch.device("cpu")
OP = "layer_norm_modulate"
PHASES = ("forward", "backward")
NATIVE = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))


def assert_within_budget(name, out, ref64, ref_same):
    """fp32: out within twice the error of the reference run in fp32 (ref_same; a row of spread 0.01
    around 5 loses ~5e-5 of its normalised values to the rounding of x itself, which no kernel
    recovers), plus a few units of rounding of the largest value. fp64 (where ref_same is the
    reference): 1e-10 of the largest value, far below any error of the formulas (the input gradient
    is rstd times differences, and rstd reaches 1e2 here)."""
    assert out.dtype == ref_same.dtype and out.shape == ref64.shape, name
    if not out.numel():
        return
    unit = 1e-10 if out.dtype == torch.float64 else 8 * torch.finfo(out.dtype).eps
    floor = unit * max(1.0, ref64.abs().max().item())
    budget = 2 * (ref_same.double() - ref64).abs().max().item() + floor
    err = (out.double() - ref64).abs().max().item()
    assert err <= budget, f"{name}: max error {err:.3g} > budget {budget:.3g}"


def _case(b, n, c, dtype, seed, spread=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, n, c, generator=g, dtype=dtype) * spread + offset).requires_grad_()
    shift = torch.randn(b, c, generator=g, dtype=dtype).requires_grad_()
    scale = torch.randn(b, c, generator=g, dtype=dtype).requires_grad_()
    dy = torch.randn(b, n, c, generator=g, dtype=dtype)
    return x, shift, scale, dy


def _grads(fn, x, shift, scale, dy):
    y = fn(x, shift, scale)
    return (y, *torch.autograd.grad(y, (x, shift, scale), dy))


def check_against_reference(backend, b, n, c, dtype, seed, spread=1.0, offset=0.0):
    x, shift, scale, dy = _case(b, n, c, dtype, seed, spread, offset)
    with runs_on(backend, OP, PHASES):
        got = _grads(lambda *a: layer_norm_modulate(*a, 1e-6, backend=backend), x, shift, scale, dy)
    args64 = [t.detach().double().requires_grad_() for t in (x, shift, scale)]
    expected = _grads(lambda *a: layer_norm_modulate_reference(*a, 1e-6), *args64, dy.double())
    same = _grads(lambda *a: layer_norm_modulate_reference(*a, 1e-6), x, shift, scale, dy)
    for name, out, ref, ref_same in zip(("output", "grad_input", "grad_shift", "grad_scale"), got, expected, same):
        assert_within_budget(name, out, ref, ref_same)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 4), n=st.integers(0, 70), c=st.integers(1, 67), spread=st.sampled_from([0.01, 1.0, 30.0]),
       offset=st.sampled_from([0.0, 5.0]), seed=st.integers(0, 1000))
def test_matches_reference(backend, dtype, b, n, c, spread, offset, seed):
    check_against_reference(backend, b, n, c, dtype, seed, spread, offset)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("shape", [(2, 64, 384), (1, 1, 1), (3, 33, 17), (2, 40, 48)], ids=str)
def test_dit_and_edge_shapes(backend, shape):
    """DiT-S's shape (whole vectors, two row blocks a sample), one value, a partial block and tails."""
    check_against_reference(backend, *shape, torch.float32, seed=1)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_gradcheck_fp64(backend):
    x, shift, scale, _ = _case(2, 3, 5, torch.float64, seed=0)
    with runs_on(backend, OP, PHASES):
        assert torch.autograd.gradcheck(lambda *a: layer_norm_modulate(*a, 1e-6, backend=backend), (x, shift, scale))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
def test_constant_rows_give_shift(backend):
    """A row with variance 0 normalises to 0 (rstd = 1/sqrt(eps)), so the output is shift, finite."""
    x = torch.full((2, 3, 9), 4.0, requires_grad=True)
    shift, scale = torch.randn(2, 9, requires_grad=True), torch.randn(2, 9, requires_grad=True)
    y = layer_norm_modulate(x, shift, scale, 1e-6, backend=backend)
    gx, gs, gc = torch.autograd.grad(y.sum(), (x, shift, scale))
    torch.testing.assert_close(y, shift.detach().unsqueeze(1).expand(2, 3, 9))
    assert all(torch.isfinite(t).all() for t in (gx, gs, gc))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
def test_strided_modulation(backend):
    """shift and scale as DiT makes them: column chunks of one (B, k C) adaLN output (not contiguous)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 10, 24, generator=g, requires_grad=True)
    ada = torch.randn(3, 48, generator=g, requires_grad=True)
    dy = torch.randn(3, 10, 24, generator=g)
    with runs_on(backend, OP, PHASES):
        y = layer_norm_modulate(x, *ada.chunk(2, dim=1), 1e-6, backend=backend)
        got = (y, *torch.autograd.grad(y, (x, ada), dy))
    y = layer_norm_modulate_reference(x, *ada.chunk(2, dim=1), 1e-6)
    for a, b in zip(got, (y, *torch.autograd.grad(y, (x, ada), dy))):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=5e-5)


def test_second_order_gradient_raises():
    x, shift, scale, _ = _case(1, 2, 4, torch.float64, seed=0)
    y = layer_norm_modulate(x, shift, scale, backend="dense")
    with pytest.raises(RuntimeError, match="layer_norm_modulate: differentiable once"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


_BAD = [
    (dict(input=torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, "input: expected a floating-point tensor"),
    (dict(input=torch.ones(2, 4)), ValueError, "input: expected 3 dims"),
    (dict(input=torch.ones(2, 3, 0), shift=torch.ones(2, 0), scale=torch.ones(2, 0)), ValueError,
     "input: expected .* C > 0"),
    (dict(shift=torch.ones(2, 5)), ValueError, r"shift: expected shape \(2, 4\)"),
    (dict(scale=torch.ones(3, 4)), ValueError, r"scale: expected shape \(2, 4\)"),
    (dict(scale=torch.ones(2, 4, dtype=torch.float64)), TypeError, "scale: expected dtype torch.float32"),
    (dict(shift=[0.0] * 4), TypeError, "shift: expected a torch.Tensor"),
    (dict(eps=0.0), ValueError, "eps: expected a positive number"),
]


@pytest.mark.parametrize("change, error, match", _BAD, ids=[m for _, _, m in _BAD])
def test_bad_arguments_are_named(change, error, match):
    args = {**dict(input=torch.ones(2, 3, 4), shift=torch.ones(2, 4), scale=torch.ones(2, 4), eps=1e-6), **change}
    with pytest.raises(error, match=match):
        layer_norm_modulate(args["input"], args["shift"], args["scale"], args["eps"])


@NATIVE
def test_kernel_ops_schemas_and_errors():
    x, shift, scale = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64), \
        torch.randn(2, 5, dtype=torch.float64)
    y, mean, rstd = torch.ops.ebsparse.layer_norm_modulate(x, shift, scale, 1e-6)
    torch.library.opcheck(torch.ops.ebsparse.layer_norm_modulate.default, (x, shift, scale, 1e-6),
                          test_utils=("test_schema",))
    torch.library.opcheck(torch.ops.ebsparse.layer_norm_modulate_backward.default,
                          (torch.randn_like(x), x, mean, rstd, scale), test_utils=("test_schema",))
    ln = torch.ops.ebsparse.layer_norm_modulate
    with pytest.raises(RuntimeError, match="input: expected float32 or float64"):
        ln(x.half(), shift.half(), scale.half(), 1e-6)
    with pytest.raises(RuntimeError, match=r"input: expected \(B, N, C\)"):
        ln(x[0], shift, scale, 1e-6)
    with pytest.raises(RuntimeError, match=r"shift: expected \(2, 5\)"):
        ln(x, shift[:, :4], scale, 1e-6)
    with pytest.raises(RuntimeError, match="scale: expected dtype"):
        ln(x, shift, scale.float(), 1e-6)
    with pytest.raises(RuntimeError, match="eps: expected a positive number"):
        ln(x, shift, scale, 0.0)
    with pytest.raises(RuntimeError, match="grad_output: expected the shape of input"):
        torch.ops.ebsparse.layer_norm_modulate_backward(x[:, :2], x, mean, rstd, scale)
    with pytest.raises(RuntimeError, match=r"rstd: expected \(2, 3\) values"):
        torch.ops.ebsparse.layer_norm_modulate_backward(x, x, mean, rstd[:, :2], scale)


_AVX2_CODE = """
for key in sorted({k.split("/")[0] for k in inputs}):
    x, shift, scale = (inputs[f"{key}/{n}"].requires_grad_() for n in ("x", "shift", "scale"))
    y = ebsparse.ops.layer_norm_modulate(x, shift, scale, 1e-6, backend="native")
    grads = torch.autograd.grad(y, (x, shift, scale), inputs[f"{key}/dy"])
    outputs.update({f"{key}/{n}": t for n, t in zip(("y", "dx", "dshift", "dscale"), (y, *grads))})
"""


@NATIVE
def test_avx2_kernels_match_reference(tmp_path):
    """The AVX2 kernels (this machine may run AVX-512) at DiT-S's shape, with tails and odd C."""
    shapes = [(2, 64, 384), (3, 33, 17), (1, 5, 7)]
    cases = {str(i): _case(*shape, torch.float32, seed=2) for i, shape in enumerate(shapes)}
    inputs = {f"{k}/{n}": t for k, case in cases.items() for n, t in zip(("x", "shift", "scale", "dy"), case)}
    got = outputs_with_capability(_AVX2_CODE, inputs, tmp_path)
    for k, (x, shift, scale, dy) in cases.items():
        args64 = [t.detach().double().requires_grad_() for t in (x, shift, scale)]
        expected = _grads(lambda *a: layer_norm_modulate_reference(*a, 1e-6), *args64, dy.double())
        same = _grads(lambda *a: layer_norm_modulate_reference(*a, 1e-6), x, shift, scale, dy)
        for n, ref, ref_same in zip(("y", "dx", "dshift", "dscale"), expected, same):
            assert_within_budget(f"{shapes[int(k)]} {n}", got[f"{k}/{n}"], ref, ref_same)


@NATIVE
def test_native_sums_do_not_depend_on_threads():
    """The per-sample sums over tokens add fixed blocks of rows in a fixed order: the same bits on
    one thread as on two (a resumed or re-sharded run reproduces the gradients)."""
    x, shift, scale, dy = _case(3, 100, 40, torch.float32, seed=5)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(_grads(lambda *a: layer_norm_modulate(*a, 1e-6, backend="native"), x, shift, scale, dy))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
