"""dropout against its pure-PyTorch reference (ebsparse.ops.philox: Philox4x32-10 checked against
the published known-answer vectors, and the keep mask built from it), on every backend that runs
here: hypothesis over shapes (empty, odd, not a multiple of the 32-element block), p from 0 to 1,
fp32 and fp64; kept fraction within a binomial bound; backward consistent with the forward's mask;
same seed -> same result, any thread count -> same result; errors named; opcheck of the kernel op;
the U-Net's ResnetBlock takes the op for a plain unobserved nn.Dropout in training."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ebsparse.backends import trace
from ebsparse.backends.extension import extension_error
from ebsparse.nn import activation
from ebsparse.ops import dropout
from ebsparse.ops.dropout import draw_seed
from ebsparse.ops.philox import keep_mask, philox4x32
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")
OP = "dropout"
NATIVE = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))
M32 = 0xFFFFFFFF


def test_philox_reference_known_answers():
    # The known-answer vectors Random123 publishes for philox4x32-10 (counter, key -> output).
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        assert tuple(philox4x32(torch.tensor([counter]), key)[0].tolist()) == expected


def _scale(p: float, dtype) -> torch.Tensor:
    return torch.tensor(0.0 if p == 1.0 else 1.0 / (1.0 - p), dtype=dtype)


@NATIVE
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 200), p=st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.9, 1.0]), seed=st.integers(0, 2**63 - 1))
def test_kernel_matches_reference_bit_for_bit(dtype, n, p, seed):
    x = torch.randn(n, dtype=dtype)
    x[::7] = float("inf")  # a dropped inf is 0, not NaN (x * 0)
    y, bits = torch.ops.ebsparse.dropout(x, p, seed)
    keep = keep_mask(n, p, seed)
    ref = torch.where(keep, x * _scale(p, dtype), torch.zeros((), dtype=dtype))
    assert torch.equal(y, ref)
    unpacked = ((bits.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).flatten()
    assert torch.equal(unpacked[:n].bool(), keep) and not unpacked[n:].any()
    go = torch.randn(n, dtype=dtype)
    dx = torch.ops.ebsparse.dropout_backward(go, bits, p)
    assert torch.equal(dx, torch.where(keep, go * _scale(p, dtype), torch.zeros((), dtype=dtype)))


def _any_calls():
    return trace()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(0, 41), min_size=1, max_size=3), p=st.sampled_from([0.0, 0.05, 0.5, 0.9, 1.0]),
       seed=st.integers(0, 1000))
def test_forward_and_backward_use_one_mask(backend, dtype, shape, p, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    go = torch.randn(shape, generator=g, dtype=dtype)
    runs = p > 0 and x.numel() > 0  # otherwise dropout returns its input, as ATen does
    with runs_on(backend, OP, ("forward", "backward")) if runs else _any_calls():
        y = dropout(x, p, generator=g, backend=backend)
        (gx,) = torch.autograd.grad(y, x, go)
    keep = y != 0  # x is never 0 (randn), so a zero output is a dropped element
    s = _scale(p, dtype)
    assert y.dtype == dtype and y.shape == x.shape and not torch.isnan(y).any()
    assert torch.equal(y[keep], x.detach()[keep] * s) and torch.equal(gx[keep], go[keep] * s)
    assert not gx[~keep].any()
    if p == 1.0:
        assert not keep.any()
    if p == 0.0:
        assert keep.all()


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9])
def test_kept_fraction_is_binomial(backend, p):
    n = 100_003
    y = dropout(torch.ones(n), p, backend=backend)
    kept = int((y != 0).sum())
    mean, sd = n * (1 - p), math.sqrt(n * p * (1 - p))
    assert abs(kept - mean) < 6 * sd, (kept, mean, sd)  # a false alarm about once in 5e8 runs


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
def test_seed_comes_from_torchs_generator(backend):
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.5, backend=backend)
    after = torch.rand(1)  # the op took exactly one draw: the stream goes on where one draw leaves it
    torch.manual_seed(3)
    draw_seed()
    assert torch.equal(torch.rand(1), after)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5, backend=backend), a)
    assert not torch.equal(dropout(x, 0.5, backend=backend), a)  # the next call draws a new seed
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(dropout(x, 0.5, generator=g1, backend=backend), dropout(x, 0.5, generator=g2, backend=backend))


@NATIVE
def test_result_does_not_depend_on_threads():
    x = torch.randn(8, 64, 33, 31)  # several tasks of the kernel's 64K-element grain, odd tail
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            y, bits = torch.ops.ebsparse.dropout(x, 0.3, 1234)
            results.append((y, bits, torch.ops.ebsparse.dropout_backward(x, bits, 0.3)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
    assert torch.equal(results[0][1][:100], torch.ops.ebsparse.dropout(x.flatten()[:800], 0.3, 1234)[1])


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_gradcheck_fp64(backend):
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)

    def fixed_mask(t):
        return dropout(t, 0.4, generator=torch.Generator().manual_seed(9), backend=backend)

    assert torch.autograd.gradcheck(fixed_mask, (x,))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_bad_p_is_named(p):
    with pytest.raises(ValueError, match="p: expected a probability in \\[0, 1\\]"):
        dropout(torch.ones(3), p)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="input: expected a floating-point tensor"):
        dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="input: expected a torch.Tensor"):
        dropout([1.0, 2.0], 0.5)


def test_eval_and_p0_return_the_input():
    x = torch.randn(5)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x


@NATIVE
def test_native_kernel_opcheck_and_errors():
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.ebsparse.dropout.default, (x, 0.3, 7))
    _, bits = torch.ops.ebsparse.dropout(x.detach(), 0.3, 7)
    torch.library.opcheck(torch.ops.ebsparse.dropout_backward.default, (torch.randn(4, 9, dtype=torch.float64), bits, 0.3))
    with pytest.raises(RuntimeError, match="input: expected float32 or float64"):
        torch.ops.ebsparse.dropout(x.detach().half(), 0.3, 7)
    with pytest.raises(RuntimeError, match="p: expected a probability"):
        torch.ops.ebsparse.dropout(x.detach(), 1.5, 7)
    with pytest.raises(RuntimeError, match="mask: expected the forward's uint8 bit mask of 5 bytes"):
        torch.ops.ebsparse.dropout_backward(x.detach(), bits[:4], 0.3)
    with pytest.raises(RuntimeError, match="backend 'native' cannot run dropout"):
        dropout(x.detach().half(), 0.3, backend="native")


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
def test_resnet_block_takes_the_op_unless_observed(backend, monkeypatch):
    from ebsparse.models.ddpm_unet import ResnetBlock

    monkeypatch.setattr(activation, "DROPOUT_BACKEND", backend)
    activation._resolved.clear()
    torch.manual_seed(0)
    block = ResnetBlock(8, 8, 16, 0.5, 4).train()
    x, temb = torch.randn(2, 8, 5, 5), torch.randn(2, 16)
    with runs_on(backend, OP, ("forward", "backward")):
        block(x, temb).sum().backward()
    seen = []
    block.dropout.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with trace() as calls:  # the module ran: its hook fired, the op did not
        block(x, temb)
    assert seen == [torch.Size([2, 8, 5, 5])] and not [c for c in calls if c[0] == OP]
    assert isinstance(block.dropout, nn.Dropout)
    with trace() as calls:  # eval: no dropout at all
        block.eval()(x, temb)
    assert not [c for c in calls if c[0] == OP]


_MASKS_CODE = ("import torch, ebsparse; print(torch.ops.ebsparse.cpu_capability()); "
               "[print(torch.ops.ebsparse.dropout(torch.ones(n), p, s)[1].numpy().tobytes().hex()) "
               "for n, p, s in ((5001, 0.1, 3), (4096, 0.5, 2**62 + 5), (999, 0.9, 77))]")


@NATIVE
def test_avx2_and_avx512_masks_agree():
    """Each instruction set's kernel gives the same bits (the process's own choice against AVX2 in a
    subprocess; on a CPU without AVX-512 both are AVX2)."""
    import os
    import subprocess
    import sys

    runs = [subprocess.run([sys.executable, "-c", _MASKS_CODE], env=dict(os.environ, EBSPARSE_CPU_CAPABILITY=cap),
                           capture_output=True, text=True) for cap in ("avx2", "")]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    (avx2_name, *avx2), (_, *best) = (r.stdout.split() for r in runs)
    assert avx2_name == "avx2" and avx2 == best and len(best) == 3
