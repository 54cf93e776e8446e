"""sparse_mlp_gelu_tanh (fc1 -> tanh-GELU -> fc2, both sparse, one op) against
``F.linear(F.gelu(F.linear(x, W1 * mask1, b1), approximate="tanh"), W2 * mask2, b2)`` in fp64:
hypothesis over odd shapes, empty and full masks, fp32/fp64, biases or none, one and two threads,
expanded gradients; gradcheck in fp64; the kernel ops' gradient subsets, schemas and errors; the
AVX2 kernels; DiT's MLP fusing it only for two native sparse layers."""

from __future__ import annotations

import os
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends import trace
from ebsparse.backends.extension import extension_error
from ebsparse.formats import build_index
from ebsparse.nn import SparseLinear
from ebsparse.ops import sparse_mlp_gelu_tanh
from tests.ops.helpers import backend_params, run_with_capability, runs_on
from tests.ops.mlp_gelu_tanh_cases import KERNEL_CASES, Threads, check_kernels, ops, problem, reference, tol

CPU = torch.device("cpu")
OP = "mlp_gelu_tanh"
native_only = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=20, deadline=None)
@given(n=st.sampled_from([1, 7, 130, 300, 531]), k=st.integers(1, 40), h=st.integers(1, 70), m=st.integers(1, 40),
       densities=st.tuples(st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.sampled_from([0.0, 0.1, 0.5, 1.0])),
       dtype=st.sampled_from([torch.float32, torch.float64]), biases=st.tuples(st.booleans(), st.booleans()),
       threads=st.sampled_from([1, 2]), expanded=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(backend, n, k, h, m, densities, dtype, biases, threads, expanded, seed):
    x, fc1, fc2, dy = problem(n, k, h, m, densities, dtype, biases, seed)
    if expanded:  # what y.sum() hands back: one value, strides (0, 0), read in place
        dy = dy[:1, :1].expand(n, m)
    params = [x, fc1[0], fc1[1], fc2[0], fc2[1]]
    leaves = [t.requires_grad_() for t in params if t is not None]
    with Threads(threads), runs_on(backend, OP, ("forward", "backward")):
        y = sparse_mlp_gelu_tanh(x, fc1[0], fc1[1], fc1[2], fc2[0], fc2[1], fc2[2], backend=backend)
        grads = iter(torch.autograd.grad(y, leaves, dy))
    ref = reference(x.detach(), fc1, fc2, dy)
    assert y.shape == (n, m) and y.dtype == dtype
    torch.testing.assert_close(y.double(), ref[0], **tol(dtype, k + h))
    for p, r, scale, mask in zip(params, ref[1:], (m + h, n, n, n, n), (None, fc1[2], None, fc2[2], None)):
        if p is None:
            continue
        got = next(grads)
        torch.testing.assert_close(got.double(), r, **tol(dtype, scale))
        if mask is not None:
            assert not got[~mask].any()


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
@pytest.mark.parametrize("n", [3, 131], ids=["one-chunk", "chunks"])
def test_gradcheck_fp64(backend, n):
    x, fc1, fc2, _ = problem(n, 5, 7, 4, (0.5, 0.6), torch.float64, (True, True), n)
    leaves = [t.requires_grad_() for t in (x, fc1[0], fc1[1], fc2[0], fc2[1])]
    index1, index2 = build_index(fc1[2]), build_index(fc2[2])

    def mlp(x, w1, b1, w2, b2):
        return sparse_mlp_gelu_tanh(x, w1, b1, fc1[2], w2, b2, fc2[2], index1=index1, index2=index2, backend=backend)

    with Threads(1), runs_on(backend, OP, ("forward", "backward")):
        assert torch.autograd.gradcheck(mlp, tuple(leaves))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
def test_output_is_freed_after_backward(backend):
    """Refcounting alone frees the output (and what the op saved) once the caller drops it: no
    reference cycle through its grad_fn keeps a step's activations alive."""
    x, fc1, fc2, dy = problem(300, 8, 16, 8, (0.5, 0.5), torch.float32, (True, True), 3)
    w1 = fc1[0].requires_grad_()
    y = sparse_mlp_gelu_tanh(x, w1, fc1[1], fc1[2], fc2[0], fc2[1], fc2[2], backend=backend)
    y.backward(dy)
    ref = weakref.ref(y)
    del y
    assert ref() is None


def test_leading_dims_and_reference_dtype():
    x, fc1, fc2, _ = problem(2 * 9, 11, 13, 6, (0.3, 0.5), torch.float32, (True, False), 0)
    out = sparse_mlp_gelu_tanh(x.reshape(2, 9, 11), *fc1, *fc2, backend="dense")
    assert out.shape == (2, 9, 6)
    torch.testing.assert_close(out.reshape(18, 6), reference(x, fc1, fc2, torch.zeros(18, 6))[0].float())


def test_bad_arguments_are_named():
    x, (w1, b1, m1), (w2, b2, m2), _ = problem(4, 6, 5, 3, (0.5, 0.5), torch.float32, (True, True), 0)
    with pytest.raises(TypeError, match=r"fc1 \(w1, b1, mask1\): input: expected a floating-point tensor"):
        sparse_mlp_gelu_tanh(x.long(), w1, b1, m1, w2, b2, m2)
    with pytest.raises(ValueError, match=r"fc1 \(w1, b1, mask1\): mask: expected shape"):
        sparse_mlp_gelu_tanh(x, w1, b1, m1[:, :3], w2, b2, m2)
    with pytest.raises(ValueError, match=r"fc2 \(w2, b2, mask2\): bias: expected shape"):
        sparse_mlp_gelu_tanh(x, w1, b1, m1, w2, b2[:2], m2)
    with pytest.raises(ValueError, match=r"w2: expected \(M, 5\)"):
        sparse_mlp_gelu_tanh(x, w1, b1, m1, w2[:, :4], b2, m2[:, :4])
    with pytest.raises(ValueError, match=r"fc1 \(w1, b1, mask1\): input: expected shape"):
        sparse_mlp_gelu_tanh(x[:, :3], w1, b1, m1, w2, b2, m2)


# ---- the kernel ops called directly ----------------------------------------------------------------

@native_only
def test_kernels_match_reference():
    check_kernels(KERNEL_CASES)


@native_only
def test_avx2_kernels_match_reference():
    """The same through the AVX2 kernels (32-row panels, no fused layer backward), in a fresh
    process: the instruction set is chosen once per process."""
    run_with_capability(os.path.join(os.path.dirname(__file__), "mlp_gelu_tanh_cases.py"),
                        "m.check_kernels(m.KERNEL_CASES)")


@native_only
def test_kernel_schemas_and_errors():
    x, (w1, b1, m1), (w2, b2, m2), dy = problem(6, 5, 4, 3, (0.5, 0.5), torch.float64, (True, True), 1)
    rp1, ci1, _, _ = build_index(m1).tensors()
    rp2, ci2, _, _ = build_index(m2).tensors()
    torch.library.opcheck(torch.ops.ebsparse.csr_mlp_gelu_tanh.default, (x, w1, b1, rp1, ci1, w2, b2, rp2, ci2),
                          test_utils=("test_schema",))
    y, pre = ops.csr_mlp_gelu_tanh(x, w1, b1, rp1, ci1, w2, b2, rp2, ci2)
    args = (x, w1, rp1, ci1, w2, rp2, ci2, True, True, True, True)
    torch.library.opcheck(torch.ops.ebsparse.csr_mlp_gelu_tanh_backward.default, (dy, pre, *args),
                          test_utils=("test_schema",))
    with pytest.raises(RuntimeError, match="input: expected float32 or float64"):
        ops.csr_mlp_gelu_tanh(x.half(), w1, b1, rp1, ci1, w2, b2, rp2, ci2)
    with pytest.raises(RuntimeError, match="b2: expected"):
        ops.csr_mlp_gelu_tanh(x, w1, b1, rp1, ci1, w2, b2[:2], rp2, ci2)
    with pytest.raises(RuntimeError, match=r"w2: expected \(M, 4\)"):
        ops.csr_mlp_gelu_tanh(x, w1, b1, rp1, ci1, w2[:, :3], b2, rp2, ci2)
    with pytest.raises(RuntimeError, match="pre_panels: expected the forward's"):
        ops.csr_mlp_gelu_tanh_backward(dy, pre[:, :2], *args)
    with pytest.raises(RuntimeError, match="pre_panels: expected dtype"):
        ops.csr_mlp_gelu_tanh_backward(dy, pre.float(), *args)
    with pytest.raises(RuntimeError, match="grad_output: expected"):
        ops.csr_mlp_gelu_tanh_backward(dy[:, :2], pre, *args)


# ---- DiT's MLP -------------------------------------------------------------------------------------

def _mlp(backend, both=True, rows_per_thread=256):
    from ebsparse.models.dit import Mlp

    torch.manual_seed(0)
    mlp = Mlp(8, 24)
    mlp.fc1 = SparseLinear.from_dense(mlp.fc1, density=0.4, backend=backend)
    if both:
        mlp.fc2 = SparseLinear.from_dense(mlp.fc2, density=0.5, backend=backend)
    x = torch.randn(rows_per_thread * torch.get_num_threads() // 4, 4, 8)
    return mlp, x


def _reference_step(mlp, x):
    w1 = mlp.fc1.weight * mlp.fc1.mask
    w2 = mlp.fc2.weight * mlp.fc2.mask if hasattr(mlp.fc2, "mask") else mlp.fc2.weight
    out = F.linear(F.gelu(F.linear(x, w1, mlp.fc1.bias), approximate="tanh"), w2, mlp.fc2.bias)
    out.square().sum().backward()
    return out


def _step(mlp, x):
    with trace() as calls:
        out = mlp(x)
        out.square().sum().backward()
    return out, {c for c in calls if c[0] == OP}


@native_only
def test_dit_mlp_fuses_two_native_sparse_layers():
    """The first call of a shape runs the layers' own ops (resolving fc2's backend for it); later
    calls run the fused op, with the reference's values and gradients."""
    mlp, x = _mlp("native")
    _, fused = _step(mlp, x)
    assert not fused
    mlp.zero_grad()
    out, fused = _step(mlp, x)
    assert fused == {(OP, "forward", "native"), (OP, "backward", "native")}
    grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    ref = _reference_step(mlp, x)
    torch.testing.assert_close(out, ref)
    for got, p in zip(grads, mlp.parameters()):
        torch.testing.assert_close(got, p.grad)


@pytest.mark.parametrize("case", ["dense-fc2", "dense-backend", "fc2-hook", "act-hook", "dense-weight-grad",
                                  "few-rows"])
def test_dit_mlp_runs_unfused_otherwise(case):
    native = "native" if extension_error() is None else "dense"
    mlp, x = _mlp("dense" if case == "dense-backend" else native, both=case != "dense-fc2",
                  rows_per_thread=8 if case == "few-rows" else 256)
    seen = []
    if case == "fc2-hook":
        mlp.fc2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    if case == "act-hook":
        mlp.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    if case == "dense-weight-grad":
        mlp.fc1.dense_weight_grad = True
    for _ in range(2):  # the second call would fuse
        mlp.zero_grad()
        out, fused = _step(mlp, x)
        assert not fused
    grads = [p.grad.clone() for p in mlp.parameters()]
    if case.endswith("hook"):
        assert seen and seen[0][-1] == (8 if case == "fc2-hook" else 24)
    mlp.zero_grad()
    torch.testing.assert_close(out, _reference_step(mlp, x))
    if case != "dense-weight-grad":  # that one's weight gradient is the full dense one
        for got, p in zip(grads, mlp.parameters()):
            torch.testing.assert_close(got, p.grad)
