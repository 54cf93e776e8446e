"""Sparse layers under torch.autocast (ebsparse.ops.amp): on CUDA they run in the autocast dtype
(sparse kernels in bf16/fp16); on the CPU they keep their dtype and run the fp32 sparse kernels
unless a backend that runs the autocast dtype is named. The CUDA policy is checked here with the
Triton interpreter standing in for the GPU where it can, and by faking CUDA's autocast state."""

import pytest
import torch

from ebsparse.backends import trace
from ebsparse.nn import SparseConv2d, SparseLinear
from ebsparse.ops import amp, block_sparse_linear, sparse_conv2d, sparse_linear, sparse_linear_reference
from tests.ops.helpers import runs_on, usable_backends

CPU = torch.device("cpu")


def _layer(seed=0):
    torch.manual_seed(seed)
    return SparseLinear(16, 12, pattern="2:4")


def test_cpu_autocast_keeps_float32_and_the_sparse_kernels_under_auto():
    sparse = [b for b in usable_backends("linear", CPU, torch.float32) if b not in ("dense", "triton")]
    if not sparse:
        pytest.skip("no CPU sparse backend built here")
    x = torch.randn(8, 16)
    w = torch.randn(12, 16)
    mask = torch.rand(12, 16) < 0.3
    with torch.autocast("cpu", torch.bfloat16):
        assert amp.autocast_dtype(CPU, "linear", None) is None
        y = sparse_linear(x, w, None, mask, backend=sparse[0])
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16  # autocast is on
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, sparse_linear_reference(x, w, None, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pattern,kwargs", [("unstructured", {}), ("block", {"block": (16, 16)})])
@pytest.mark.parametrize("backend", ["native", "auto"])
def test_cpu_autocast_casts_a_bf16_activation_to_the_layers_dtype(pattern, kwargs, backend):
    """Behind an autocast (bf16) dense layer a sparse layer gets a bf16 activation: it takes it as
    autocast's float32 ops do (cast to the weight's dtype), returns float32 and gives float32
    gradients; `auto`'s timing and its dense path run outside autocast (they were cast to bf16 and
    the conv's backward failed inside oneDNN)."""
    if "native" not in usable_backends("linear", CPU, torch.float32):
        pytest.skip("native kernels not built")
    torch.manual_seed(0)
    conv = SparseConv2d(32, 32, 3, padding=1, pattern=pattern, density=0.5, backend=backend, **kwargs)
    linear = SparseLinear(32, 32, pattern=pattern, density=0.5, backend=backend, **kwargs)
    dense_conv, dense_linear = torch.nn.Conv2d(3, 32, 1), torch.nn.Linear(32 * 4 * 4, 32)
    x = torch.randn(2, 3, 4, 4)
    with trace() as calls:
        with torch.autocast("cpu", torch.bfloat16):
            hidden = dense_conv(x)
            assert hidden.dtype == torch.bfloat16
            y = conv(hidden)
            z = linear(dense_linear(y.flatten(1)))
        assert y.dtype == z.dtype == torch.float32
        z.sum().backward()
    if backend == "native":  # the named backend ran both layers, both ways
        ops = ("block_conv2d", "block_linear") if pattern == "block" else ("conv2d", "linear")
        assert {(op, phase) for op, phase, name in calls if name == "native"} >= \
            {(op, phase) for op in ops for phase in ("forward", "backward")}
        assert {name for op, _, name in calls if op in ops} == {"native"}
    assert conv.weight.grad.dtype == linear.weight.grad.dtype == torch.float32
    expected = torch.nn.functional.conv2d(hidden.detach().float(), conv.weight * conv.mask, conv.bias, padding=1)
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)


def test_cpu_autocast_casts_for_the_functional_block_ops():
    if "native" not in usable_backends("linear", CPU, torch.float32):
        pytest.skip("native kernels not built")
    torch.manual_seed(0)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    w = torch.randn(32, 32)
    mask = torch.zeros(2, 2, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    mask = mask.repeat_interleave(16, 0).repeat_interleave(16, 1)
    with torch.autocast("cpu", torch.bfloat16), runs_on("native", "block_linear"):
        y = block_sparse_linear(x, w, None, mask, (16, 16), backend="native")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float() @ (w * mask).t(), rtol=1e-5, atol=1e-5)


def test_cpu_autocast_runs_bf16_on_a_named_backend_that_has_it():
    layer = _layer()
    x = torch.randn(5, 16)
    with torch.autocast("cpu", torch.bfloat16):
        with runs_on("dense", "linear"):
            layer.backend = "dense"
            y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32  # the master weight's gradient
    assert not layer.weight.grad[~layer.mask].any()


@pytest.mark.skipif("triton" not in usable_backends("linear", CPU, torch.bfloat16),
                    reason="the Triton backend cannot run here (interpreter off)")
def test_autocast_bf16_module_runs_the_2_4_tensor_core_kernels(monkeypatch):
    import ebsparse.triton as kernels

    calls = []
    for name in ("twofour_linear", "twofour_linear_grad_input", "twofour_linear_grad_weight"):
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *a, _fn=fn, _n=name, **k: calls.append((_n, a[0].dtype)) or _fn(*a, **k))
    layer = _layer()
    layer.backend = "triton"
    x = torch.randn(7, 16, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16), runs_on("triton", "linear", ("forward", "backward")):
        y = layer(x)
        y.float().pow(2).sum().backward()
    assert y.dtype == torch.bfloat16
    assert {n for n, _ in calls} == {"twofour_linear", "twofour_linear_grad_input", "twofour_linear_grad_weight"}
    assert {d for _, d in calls} == {torch.bfloat16}
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    ref = sparse_linear_reference(x.detach().double(), layer.weight.detach().double(), layer.bias.detach().double(),
                                  layer.mask)
    torch.testing.assert_close(y.double(), ref, atol=0.1, rtol=0.05)


def test_cuda_autocast_policy_casts_to_the_autocast_dtype(monkeypatch):
    """On CUDA every backend is asked for the autocast dtype (no GPU here: CUDA's autocast state is
    faked; the cast itself is device-independent)."""
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    assert amp.autocast_dtype(torch.device("cuda"), "linear", None) is torch.bfloat16
    assert amp.autocast_dtype(torch.device("cuda"), "conv2d", "auto") is torch.bfloat16
    assert amp.autocast_dtype(CPU, "linear", None) is None  # CPU autocast is off
    x, w, b = torch.randn(2, 4), torch.randn(3, 4, dtype=torch.float16), torch.randn(3, dtype=torch.float64)
    cx, cw, cb = amp.cast(torch.bfloat16, x, w, b)
    assert (cx.dtype, cw.dtype, cb.dtype) == (torch.bfloat16, torch.bfloat16, torch.float64)


def test_autocast_conv_on_named_dense_backend():
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(8, 4, 3, 3)
    mask = torch.rand(8, 4, 3, 3) < 0.5
    with torch.autocast("cpu", torch.bfloat16), runs_on("dense", "conv2d"):
        y = sparse_conv2d(x, w, None, mask, 1, 1, backend="dense")
    assert y.dtype == torch.bfloat16



def _state_probe(decorator):
    """A Function whose backward records the CUDA autocast state it runs under."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type="cuda")
        def forward(ctx, x):
            return x * 2

        @staticmethod
        @decorator
        def backward(ctx, grad):
            seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")))
            return grad * 2

    return Probe, seen


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
@pytest.mark.parametrize("forward_autocast,backward_autocast", [(False, False), (True, False), (False, True),
                                                                (True, True)])
def test_cuda_custom_bwd_gives_the_backward_the_state_torchs_decorator_gives(forward_autocast, backward_autocast):
    """ops.amp.cuda_custom_bwd skips torch.amp.custom_bwd's context where it changes nothing; the
    state the backward sees is torch's in every case (the CUDA autocast flag is thread-local, so it
    is set here without a GPU)."""
    from ebsparse.ops.amp import cuda_custom_bwd

    def run(decorator):
        probe, seen = _state_probe(decorator)
        x = torch.ones(3, requires_grad=True)
        before = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        try:
            torch.set_autocast_enabled("cuda", forward_autocast)
            torch.set_autocast_dtype("cuda", torch.bfloat16)
            y = probe.apply(x)
            torch.set_autocast_enabled("cuda", backward_autocast)
            torch.set_autocast_dtype("cuda", torch.float16)
            y.sum().backward()
        finally:
            torch.set_autocast_enabled("cuda", before[0])
            torch.set_autocast_dtype("cuda", before[1])
        assert torch.equal(x.grad, torch.full((3,), 2.0))
        return seen

    ours, torchs = run(cuda_custom_bwd), run(torch.amp.custom_bwd(device_type="cuda"))
    assert len(ours) == len(torchs) == 1
    # torch.autocast("cuda") turns itself off where there is no GPU, so here the flag can be True only
    # with one; the dtype matters only while the flag is on
    assert ours[0][0] == torchs[0][0] == (forward_autocast and torch.cuda.is_available())
    if torchs[0][0]:
        assert ours == torchs == [(True, torch.bfloat16)]
