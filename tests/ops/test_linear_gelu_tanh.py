"""sparse_linear_gelu_tanh against ``F.gelu(F.linear(x, W * mask, b), approximate="tanh")`` in fp64:
hypothesis over odd shapes, empty and full masks, fp32/fp64, one and two threads (the native
backward's per-thread path, which forms the GELU gradient in its panels, and its small-batch path,
which makes it in memory first), expanded gradients; gradcheck in fp64; the kernel ops' gradient
subsets and errors; the AVX2 kernels; DiT's MLP fusing it only for a native sparse fc1."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends import trace
from ebsparse.backends.extension import extension_error
from ebsparse.formats import build_index
from ebsparse.nn import SparseLinear
from ebsparse.nn import activation
from ebsparse.ops.linear_gelu_tanh import sparse_linear_gelu_tanh, sparse_linear_gelu_tanh_reference
from tests.ops.helpers import backend_params, run_with_capability, runs_on
from tests.ops.linear_gelu_tanh_cases import KERNEL_CASES, problem, reference_grads, Threads, tol, check_kernels, ops

CPU = torch.device("cpu")
OP = "linear_gelu_tanh"
native_only = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=20, deadline=None)
@given(n=st.sampled_from([1, 7, 130, 300, 531]), k=st.integers(1, 70), m=st.integers(1, 70),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), dtype=st.sampled_from([torch.float32, torch.float64]),
       bias=st.booleans(), threads=st.sampled_from([1, 2]), expanded=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(backend, n, k, m, density, dtype, bias, threads, expanded, seed):
    x, w, b, mask, ga = problem(n, k, m, density, dtype, bias, seed)
    if expanded:  # what y.sum() hands back: one value, strides (0, 0), read in place
        ga = ga[:1, :1].expand(n, m)
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    with Threads(threads), runs_on(backend, OP, ("forward", "backward")):
        act = sparse_linear_gelu_tanh(x, w, b, mask, backend=backend)
        grads = torch.autograd.grad(act, leaves, ga)
    ref = reference_grads(x.detach(), w.detach(), b.detach() if b is not None else None, mask, ga)
    assert act.shape == (n, m) and act.dtype == dtype
    torch.testing.assert_close(act.double(), ref[0], **tol(dtype, k))
    torch.testing.assert_close(grads[0].double(), ref[1], **tol(dtype, m))
    torch.testing.assert_close(grads[1].double(), ref[2], **tol(dtype, n))
    assert not grads[1][~mask].any()
    if b is not None:
        torch.testing.assert_close(grads[2].double(), ref[3], **tol(dtype, n))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
@pytest.mark.parametrize("n", [3, 131], ids=["small-batch", "per-thread"])
def test_gradcheck_fp64(backend, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(6, 5, generator=g) < 0.5
    index = build_index(mask)
    with Threads(1), runs_on(backend, OP, ("forward", "backward")):
        assert torch.autograd.gradcheck(
            lambda x, w, b: sparse_linear_gelu_tanh(x, w, b, mask, index=index, backend=backend), (x, w, b))


def test_leading_dims_and_reference_dtype():
    x, w, b, mask, _ = problem(2 * 9, 11, 13, 0.3, torch.float32, True, 0)
    out = sparse_linear_gelu_tanh(x.reshape(2, 9, 11), w, b, mask, backend="dense")
    assert out.shape == (2, 9, 13)
    torch.testing.assert_close(out.reshape(18, 13), sparse_linear_gelu_tanh_reference(x, w, b, mask))


def test_bad_arguments_are_named():
    x, w, b, mask, _ = problem(4, 6, 5, 0.5, torch.float32, True, 0)
    with pytest.raises(TypeError, match="input: expected a floating-point tensor"):
        sparse_linear_gelu_tanh(x.long(), w, b, mask)
    with pytest.raises(ValueError, match="mask: expected shape"):
        sparse_linear_gelu_tanh(x, w, b, mask[:, :3])
    with pytest.raises(ValueError, match="bias: expected shape"):
        sparse_linear_gelu_tanh(x, w, b[:2], mask)
    with pytest.raises(ValueError, match="input: expected shape"):
        sparse_linear_gelu_tanh(x[:, :3], w, b, mask)


# ---- the kernel ops called directly ----------------------------------------------------------------

@native_only
def test_kernels_match_reference():
    check_kernels(KERNEL_CASES)


@native_only
def test_avx2_kernels_match_reference():
    """The same through the AVX2 kernels (8-lane, 32-row panels), in a fresh process: the
    instruction set is chosen once per process."""
    run_with_capability(os.path.join(os.path.dirname(__file__), "linear_gelu_tanh_cases.py"),
                        "m.check_kernels(m.KERNEL_CASES)")


@native_only
def test_kernel_schemas_and_errors():
    x, w, b, mask, ga = problem(6, 5, 4, 0.5, torch.float64, True, 1)
    rp, ci, _, _ = build_index(mask).tensors()
    torch.library.opcheck(torch.ops.ebsparse.csr_linear_gelu_tanh.default, (x, w, b, rp, ci),
                          test_utils=("test_schema",))
    act, pre = ops.csr_linear_gelu_tanh(x, w, b, rp, ci)
    torch.library.opcheck(torch.ops.ebsparse.csr_linear_gelu_tanh_backward.default,
                          (ga, pre, x, w, rp, ci, True, True, True), test_utils=("test_schema",))
    with pytest.raises(RuntimeError, match="input: expected float32 or float64"):
        ops.csr_linear_gelu_tanh(x.half(), w, b, rp, ci)
    with pytest.raises(RuntimeError, match="bias: expected"):
        ops.csr_linear_gelu_tanh(x, w, b[:2], rp, ci)
    with pytest.raises(RuntimeError, match="pre_act: expected the shape of grad_act"):
        ops.csr_linear_gelu_tanh_backward(ga, pre[:2], x, w, rp, ci, True, True, True)
    with pytest.raises(RuntimeError, match="pre_act: expected dtype"):
        ops.csr_linear_gelu_tanh_backward(ga, pre.float(), x, w, rp, ci, True, True, True)
    with pytest.raises(RuntimeError, match="grad_act: expected"):
        ops.csr_linear_gelu_tanh_backward(ga[:, :2], pre, x, w, rp, ci, True, True, True)


# ---- DiT's MLP -------------------------------------------------------------------------------------

def _mlp(sparse_backend):
    from ebsparse.models.dit import Mlp

    torch.manual_seed(0)
    mlp = Mlp(8, 24)
    if sparse_backend is not None:
        mlp.fc1 = SparseLinear.from_dense(mlp.fc1, density=0.4, backend=sparse_backend)
    return mlp


def _fused_calls(mlp, x):
    with trace() as calls:
        out = mlp(x)
        out.sum().backward()
    return out, [c for c in calls if c[0] == OP]


@native_only
def test_dit_mlp_fuses_a_native_sparse_fc1(monkeypatch):
    monkeypatch.setattr(activation, "BACKEND", "native")
    mlp = _mlp("native")
    x = torch.randn(2, 5, 8)
    with runs_on("native", OP, ("forward", "backward")):
        out = mlp(x)
        out.sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    ref = mlp.fc2(F.gelu(F.linear(x, mlp.fc1.weight * mlp.fc1.mask, mlp.fc1.bias), approximate="tanh"))
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for got, p in zip(grads, mlp.parameters()):
        torch.testing.assert_close(got, p.grad)


@pytest.mark.parametrize("case", ["dense-model", "dense-backend", "fc1-hook", "act-hook"])
def test_dit_mlp_runs_unfused_otherwise(case):
    mlp = _mlp(None if case == "dense-model" else "dense" if case == "dense-backend" else "native"
               if extension_error() is None else "dense")
    seen = []
    if case == "fc1-hook":
        mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    if case == "act-hook":
        mlp.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 5, 8)
    out, fused = _fused_calls(mlp, x)
    assert not fused
    if case.endswith("hook"):
        assert seen == [torch.Size([2, 5, 24])]
    w = mlp.fc1.weight * mlp.fc1.mask if hasattr(mlp.fc1, "mask") else mlp.fc1.weight
    torch.testing.assert_close(out, mlp.fc2(F.gelu(F.linear(x, w, mlp.fc1.bias), approximate="tanh")))


@native_only
def test_compiled_mlp_runs_sparse_linear_then_gelu():
    """Under torch.compile the fused op is not traced: the MLP compiles (fullgraph) to the traced
    `sparse_linear` and ATen's GELU, with the eager values and gradients."""
    mlp = _mlp("native")
    x = torch.randn(2, 5, 8)
    eager = mlp(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
    with trace() as calls:
        out = compiled(x)
        out.sum().backward()
    assert not [c for c in calls if c[0] == OP] and [c for c in calls if c[0] == "linear"]
    torch.testing.assert_close(out, eager)
    for got, p in zip(grads, mlp.parameters()):
        torch.testing.assert_close(p.grad, got)
