"""residual_norm_modulate (out = input + gate[:, None] * branch; y = LN(out) * (1 + scale) + shift,
DiT's gated add and the next adaLN norm as one op) on every backend that runs here against the
pure-PyTorch reference in fp64: hypothesis over shapes (odd channel counts, one token, no tokens),
fp32 and fp64, both outputs and the five gradients, with and without a gradient of `out`; gradcheck
in fp64; bad arguments named by the Python checks and by the kernel ops; the AVX2 kernels in a
process of their own; DiT's block running it."""

from __future__ import annotations

import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends import trace
from ebsparse.backends.extension import extension_error
from ebsparse.nn import adaln
from ebsparse.ops.residual_norm_modulate import residual_norm_modulate, residual_norm_modulate_reference
from tests.ops.helpers import assert_named_close, backend_params, outputs_with_capability, runs_on

CPU = torch.device("cpu")
OP = "residual_norm_modulate"
PHASES = ("forward", "backward")
NATIVE = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))
NAMES = ("out", "y", "grad_input", "grad_gate", "grad_branch", "grad_shift", "grad_scale")


def _tol(dtype, n, condition=1.0):
    # fp32: the per-sample gradients sum n products of O(1) values over the tokens; and the rows that
    # LayerNorm normalises amplify the rounding of the residual sum by their condition (_condition)
    if dtype == torch.float64:
        return dict(atol=1e-11, rtol=1e-9)
    return dict(atol=3e-5 * max(1, n) ** 0.5 * condition, rtol=3e-5 * condition)


def _condition(out: torch.Tensor) -> float:
    """max over rows of max|out| / std(out): how much LayerNorm magnifies a relative error of its
    input row (a few channels of nearly equal values, e.g. c = 2, make it large; rows of one
    channel normalise to zero whatever their error)."""
    if out.numel() == 0 or out.shape[-1] < 2:
        return 1.0
    std = out.std(-1, unbiased=False).clamp_min(1e-300)
    return max(1.0, (out.abs().amax(-1) / std).max().item())


def _case(b, n, c, dtype, seed):
    """input, gate, branch, shift, scale (leaves), then grad_out, grad_y."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, n, c), (b, c), (b, n, c), (b, c), (b, c), (b, n, c), (b, n, c)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_(i < 5) for i, s in enumerate(shapes)]


def _grads(fn, leaves, grad_out, grad_y):
    out, y = fn(*leaves)
    outputs, grads = ((out, y), (grad_out, grad_y)) if grad_out is not None else ((y,), (grad_y,))
    return (out, y, *torch.autograd.grad(outputs, leaves, grads))


def check_against_reference(backend, b, n, c, dtype, seed, with_grad_out=True):
    *leaves, grad_out, grad_y = _case(b, n, c, dtype, seed)
    grad_out = grad_out if with_grad_out else None
    with runs_on(backend, OP, PHASES):
        got = _grads(lambda *a: residual_norm_modulate(*a, backend=backend), leaves, grad_out, grad_y)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    expected = _grads(residual_norm_modulate_reference, leaves64, grad_out.double() if with_grad_out else None,
                      grad_y.double())
    assert_named_close(NAMES, got, expected, dtype, _tol(dtype, n, _condition(expected[0].detach())))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 4), n=st.integers(0, 70), c=st.integers(1, 67), with_grad_out=st.booleans(),
       seed=st.integers(0, 1000))
def test_matches_reference(backend, dtype, b, n, c, with_grad_out, seed):
    check_against_reference(backend, b, n, c, dtype, seed, with_grad_out)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("shape", [(2, 64, 384), (1, 1, 1), (3, 33, 17)], ids=str)
def test_dit_and_edge_shapes(backend, shape):
    check_against_reference(backend, *shape, torch.float32, seed=1)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_gradcheck_fp64(backend):
    leaves = _case(2, 3, 5, torch.float64, seed=0)[:5]
    with runs_on(backend, OP, PHASES):
        assert torch.autograd.gradcheck(lambda *a: residual_norm_modulate(*a, backend=backend), tuple(leaves))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("use_out", [True, False], ids=["out-used", "y-only"])
def test_outputs_are_freed_after_backward(backend, use_out):
    """Refcounting alone frees both outputs once the caller drops them after the backward: the op
    keeps `out` for its backward without a reference cycle through its grad_fn (one leaked the
    whole step's activations of a DiT block every training step)."""
    leaves = _case(2, 5, 8, torch.float32, seed=5)[:5]
    out, y = residual_norm_modulate(*leaves, backend=backend)
    ((out.sum() if use_out else 0) + y.square().sum()).backward()
    refs = [weakref.ref(out), weakref.ref(y)]
    del out, y
    assert [r() for r in refs] == [None, None]


def test_second_order_gradient_raises():
    leaves = _case(1, 2, 4, torch.float64, seed=0)[:5]
    _, y = residual_norm_modulate(*leaves, backend="dense")
    with pytest.raises(RuntimeError, match="residual_norm_modulate: differentiable once"):
        torch.autograd.grad(y.sum(), leaves[1], create_graph=True)


_BAD = [
    (dict(input=torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, "input: expected a floating-point tensor"),
    (dict(gate=torch.ones(2, 5)), ValueError, r"gate: expected shape \(2, 4\)"),
    (dict(branch=torch.ones(2, 3, 5)), ValueError, r"branch: expected shape \(2, 3, 4\)"),
    (dict(shift=torch.ones(2, 5)), ValueError, r"shift: expected shape \(2, 4\)"),
    (dict(scale=torch.ones(2, 4, dtype=torch.float64)), TypeError, "scale: expected dtype torch.float32"),
    (dict(eps=0.0), ValueError, "eps: expected a positive number"),
]


@pytest.mark.parametrize("change, error, match", _BAD, ids=[m for _, _, m in _BAD])
def test_bad_arguments_are_named(change, error, match):
    args = {**dict(input=torch.ones(2, 3, 4), gate=torch.ones(2, 4), branch=torch.ones(2, 3, 4),
                   shift=torch.ones(2, 4), scale=torch.ones(2, 4), eps=1e-6), **change}
    with pytest.raises(error, match=match):
        residual_norm_modulate(**args)


@NATIVE
def test_kernel_ops_schemas_and_errors():
    x, gate, branch, shift, scale, grad_out, grad_y = (t.detach() for t in _case(2, 3, 5, torch.float64, seed=3))
    torch.library.opcheck(torch.ops.ebsparse.residual_norm_modulate.default, (x, gate, branch, shift, scale, 1e-6),
                          test_utils=("test_schema",))
    out, y, mean, rstd = torch.ops.ebsparse.residual_norm_modulate(x, gate, branch, shift, scale, 1e-6)
    for go in (grad_out, None):
        torch.library.opcheck(torch.ops.ebsparse.residual_norm_modulate_backward.default,
                              (go, grad_y, out, mean, rstd, scale, gate, branch), test_utils=("test_schema",))
    op, backward = torch.ops.ebsparse.residual_norm_modulate, torch.ops.ebsparse.residual_norm_modulate_backward
    with pytest.raises(RuntimeError, match="input: expected float32 or float64"):
        op(x.half(), gate.half(), branch.half(), shift.half(), scale.half(), 1e-6)
    with pytest.raises(RuntimeError, match=r"shift: expected \(2, 5\)"):
        op(x, gate, branch, shift[:1], scale, 1e-6)
    with pytest.raises(RuntimeError, match="eps: expected a positive number"):
        op(x, gate, branch, shift, scale, 0.0)
    with pytest.raises(RuntimeError, match="grad_out: expected the shape of out"):
        backward(grad_out[:1], grad_y, out, mean, rstd, scale, gate, branch)
    with pytest.raises(RuntimeError, match=r"rstd: expected \(2, 3\) values"):
        backward(grad_out, grad_y, out, mean, rstd[:1], scale, gate, branch)


_AVX2_CODE = """
from ebsparse.ops.residual_norm_modulate import residual_norm_modulate
for key in sorted({k.split("/")[0] for k in inputs}):
    leaves = [inputs[f"{key}/{n}"].requires_grad_() for n in ("x", "gate", "branch", "shift", "scale")]
    out, y = residual_norm_modulate(*leaves, backend="native")
    grads = torch.autograd.grad((out, y), leaves, (inputs[f"{key}/grad_out"], inputs[f"{key}/grad_y"]))
    outputs.update({f"{key}/{n}": t for n, t in zip(%r, (out, y, *grads))})
""" % (NAMES,)


@NATIVE
def test_avx2_kernels_match_reference(tmp_path):
    """The AVX2 kernels (this machine may run AVX-512) at DiT-S's shape, with tails and odd C."""
    shapes = [(2, 64, 384), (3, 33, 17), (1, 5, 7)]
    cases = {str(i): [t.detach() for t in _case(*shape, torch.float32, seed=2)] for i, shape in enumerate(shapes)}
    names = ("x", "gate", "branch", "shift", "scale", "grad_out", "grad_y")
    inputs = {f"{k}/{n}": t for k, case in cases.items() for n, t in zip(names, case)}
    got = outputs_with_capability(_AVX2_CODE, inputs, tmp_path)
    for k, case in cases.items():
        leaves64 = [t.double().requires_grad_() for t in case[:5]]
        expected = _grads(residual_norm_modulate_reference, leaves64, case[5].double(), case[6].double())
        for name, ref in zip(NAMES, expected):
            torch.testing.assert_close(got[f"{k}/{name}"].double(), ref, **_tol(torch.float32, shapes[int(k)][1]))


@NATIVE
def test_dit_block_runs_it(monkeypatch):
    """DiT's block runs its attention's gated add and norm2 as this op (and gives the values of the
    ATen composition, which a hooked norm falls back to)."""
    from ebsparse.models.dit import DiTBlock

    monkeypatch.setattr(adaln, "BACKEND", "native")
    torch.manual_seed(0)
    block = DiTBlock(32, 4, 4.0)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, c = torch.randn(2, 9, 32), torch.randn(2, 32)
    with runs_on("native", OP, PHASES):
        out = block(x, c)
        out.square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    block.norm2.register_forward_hook(lambda *a: None)  # a hooked norm: the ATen composition
    with trace() as calls:
        ref = block(x, c)
        ref.square().sum().backward()
    assert not [call for call in calls if call[0] == OP]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, p in zip(grads, block.parameters()):
        torch.testing.assert_close(got, p.grad, atol=1e-5, rtol=1e-5)
