"""gated_residual (input + gate[:, None] * branch, DiT's adaLN-Zero residual add) on every backend
that runs here against the pure-PyTorch reference in fp64: hypothesis over shapes (odd channel
counts, one token, no tokens, one sample), fp32 and fp64, forward and the three gradients (the
input's is grad_output itself); gradcheck in fp64; the backward of one gradient at a time; bad
arguments named by the Python checks and by the kernel ops; the AVX2 kernels in a process of their own."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends.extension import extension_error
from ebsparse.ops import gated_residual, gated_residual_reference
from tests.ops.helpers import assert_named_close, backend_params, outputs_with_capability, runs_on

CPU = torch.device("cpu")
OP = "gated_residual"
PHASES = ("forward", "backward")
NATIVE = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))
NAMES = ("out", "grad_input", "grad_gate", "grad_branch")


def _tol(dtype, n):
    # fp32: grad_gate sums n products of O(1) values over the tokens
    return dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-6 * max(1, n) ** 0.5, rtol=2e-5)


def _case(b, n, c, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype).requires_grad_() if i < 3 else
            torch.randn(shape, generator=g, dtype=dtype) for i, shape in enumerate([(b, n, c), (b, c), (b, n, c),
                                                                                    (b, n, c)])]


def _grads(fn, x, gate, branch, dy):
    out = fn(x, gate, branch)
    return (out, *torch.autograd.grad(out, (x, gate, branch), dy))


def check_against_reference(backend, b, n, c, dtype, seed):
    x, gate, branch, dy = _case(b, n, c, dtype, seed)
    with runs_on(backend, OP, PHASES):
        got = _grads(lambda *a: gated_residual(*a, backend=backend), x, gate, branch, dy)
    args64 = [t.detach().double().requires_grad_() for t in (x, gate, branch)]
    expected = _grads(gated_residual_reference, *args64, dy.double())
    assert_named_close(NAMES, got, expected, dtype, _tol(dtype, n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 4), n=st.integers(0, 70), c=st.integers(1, 67), seed=st.integers(0, 1000))
def test_matches_reference(backend, dtype, b, n, c, seed):
    check_against_reference(backend, b, n, c, dtype, seed)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("shape", [(2, 64, 384), (1, 1, 1), (3, 33, 17)], ids=str)
def test_dit_and_edge_shapes(backend, shape):
    check_against_reference(backend, *shape, torch.float32, seed=1)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_gradcheck_fp64(backend):
    x, gate, branch, _ = _case(2, 3, 5, torch.float64, seed=0)
    with runs_on(backend, OP, PHASES):
        assert torch.autograd.gradcheck(lambda *a: gated_residual(*a, backend=backend), (x, gate, branch))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("wanted", [0, 1, 2], ids=["input", "gate", "branch"])
def test_one_gradient_at_a_time(backend, wanted):
    """Only the asked-for gradient comes back; the input's alone runs no kernel (it is grad_output)."""
    tensors = _case(2, 5, 6, torch.float32, seed=4)
    args = [t.detach().requires_grad_(i == wanted) for i, t in enumerate(tensors[:3])]
    dy = tensors[3]
    with runs_on(backend, OP, ("forward",) if wanted == 0 else PHASES) as calls:
        out = gated_residual(*args, backend=backend)
        (grad,) = torch.autograd.grad(out, args[wanted], dy)
    (ref,) = torch.autograd.grad(gated_residual_reference(*args), args[wanted], dy)
    torch.testing.assert_close(grad, ref)
    if wanted == 0:
        assert grad is dy or torch.equal(grad, dy)
        assert not [c for c in calls if c[1] == "backward"]


def test_second_order_gradient_raises():
    x, gate, branch, _ = _case(1, 2, 4, torch.float64, seed=0)
    out = gated_residual(x, gate, branch, backend="dense")
    with pytest.raises(RuntimeError, match="gated_residual: differentiable once"):
        torch.autograd.grad(out.sum(), gate, create_graph=True)


_BAD = [
    (dict(input=torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, "input: expected a floating-point tensor"),
    (dict(input=torch.ones(2, 4)), ValueError, "input: expected 3 dims"),
    (dict(gate=torch.ones(2, 5)), ValueError, r"gate: expected shape \(2, 4\)"),
    (dict(gate=torch.ones(2, 1, 4)), ValueError, "gate: expected 2 dims"),
    (dict(gate=torch.ones(2, 4, dtype=torch.float64)), TypeError, "gate: expected dtype torch.float32"),
    (dict(branch=torch.ones(2, 3, 5)), ValueError, r"branch: expected shape \(2, 3, 4\)"),
    (dict(branch=torch.ones(2, 3, 4, dtype=torch.float64)), TypeError, "branch: expected dtype torch.float32"),
    (dict(branch=None), TypeError, "branch: expected a torch.Tensor"),
]


@pytest.mark.parametrize("change, error, match", _BAD, ids=[m for _, _, m in _BAD])
def test_bad_arguments_are_named(change, error, match):
    args = {**dict(input=torch.ones(2, 3, 4), gate=torch.ones(2, 4), branch=torch.ones(2, 3, 4)), **change}
    with pytest.raises(error, match=match):
        gated_residual(args["input"], args["gate"], args["branch"])


@NATIVE
def test_kernel_ops_schemas_and_errors():
    x, gate, branch = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64), \
        torch.randn(2, 3, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.ebsparse.gated_residual.default, (x, gate, branch), test_utils=("test_schema",))
    torch.library.opcheck(torch.ops.ebsparse.gated_residual_backward.default, (torch.randn_like(x), gate, branch),
                          test_utils=("test_schema",))
    op = torch.ops.ebsparse.gated_residual
    with pytest.raises(RuntimeError, match="input: expected float32 or float64"):
        op(x.half(), gate.half(), branch.half())
    with pytest.raises(RuntimeError, match=r"gate: expected \(2, 5\)"):
        op(x, gate[:1], branch)
    with pytest.raises(RuntimeError, match="branch: expected the shape of input"):
        op(x, gate, branch[:, :2])
    with pytest.raises(RuntimeError, match="branch: expected dtype"):
        op(x, gate, branch.float())
    with pytest.raises(RuntimeError, match="grad_output: expected the shape of branch"):
        torch.ops.ebsparse.gated_residual_backward(x[:1], gate, branch)


_AVX2_CODE = """
for key in sorted({k.split("/")[0] for k in inputs}):
    x, gate, branch = (inputs[f"{key}/{n}"].requires_grad_() for n in ("x", "gate", "branch"))
    out = ebsparse.ops.gated_residual(x, gate, branch, backend="native")
    grads = torch.autograd.grad(out, (x, gate, branch), inputs[f"{key}/dy"])
    outputs.update({f"{key}/{n}": t for n, t in zip(("out", "grad_input", "grad_gate", "grad_branch"), (out, *grads))})
"""


@NATIVE
def test_avx2_kernels_match_reference(tmp_path):
    """The AVX2 kernels (this machine may run AVX-512) at DiT-S's shape, with tails and odd C."""
    shapes = [(2, 64, 384), (3, 33, 17), (1, 5, 7)]
    cases = {str(i): _case(*shape, torch.float32, seed=2) for i, shape in enumerate(shapes)}
    inputs = {f"{k}/{n}": t for k, case in cases.items() for n, t in zip(("x", "gate", "branch", "dy"), case)}
    got = outputs_with_capability(_AVX2_CODE, inputs, tmp_path)
    for k, (x, gate, branch, dy) in cases.items():
        args64 = [t.detach().double().requires_grad_() for t in (x, gate, branch)]
        for name, ref in zip(NAMES, _grads(gated_residual_reference, *args64, dy.double())):
            torch.testing.assert_close(got[f"{k}/{name}"].double(), ref, **_tol(torch.float32, shapes[int(k)][1]))


@NATIVE
def test_native_sums_do_not_depend_on_threads():
    """The gate's gradient adds fixed blocks of token rows in a fixed order: the same bits on one
    thread as on two."""
    x, gate, branch, dy = _case(3, 100, 40, torch.float32, seed=5)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(_grads(lambda *a: gated_residual(*a, backend="native"), x, gate, branch, dy))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
