"""qkv_attention's float32 AVX-512 kernel (csrc/cpu/attention/qkv_attention_avx512.cpp: its own
register-tiled products, 16-column vectors with a masked last one, 6-row tiles with a tail) against
the plain-math fp64 reference: hypothesis over token counts and head dims around those widths
(1, 15-17, 63-65, up to the native limit of 256 tokens; odd head dims, 72, 80), output and d(qkv).
Each test asserts the kernel that ran is "tiled-avx512" (torch.ops.ebsparse.qkv_attention_cpu_kernel,
the same choice the kernel makes) and is skipped, with the reason, on a CPU or capability without
AVX-512. float64 and EBSPARSE_CPU_CAPABILITY=avx2 keep the BLAS kernel, checked here to agree."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.backends.extension import extension_error
from ebsparse.ops import qkv_attention, qkv_attention_reference
from ebsparse.ops.qkv_attention import NATIVE_MAX_TOKENS
from tests.ops.helpers import outputs_with_capability, runs_on

OP = "qkv_attention"


def _kernel(dtype) -> str:
    return torch.ops.ebsparse.qkv_attention_cpu_kernel(torch.empty(0, dtype=dtype))


def _skip_reason() -> str | None:
    if extension_error() is not None:
        return str(extension_error())
    if _kernel(torch.float32) != "tiled-avx512":
        return f"fp32 qkv_attention runs {_kernel(torch.float32)!r} here (no AVX-512 or EBSPARSE_CPU_CAPABILITY=avx2)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _case(b, n, h, d, seed, spread):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(b, n, 3 * h * d, generator=g) * spread).requires_grad_()
    return qkv, torch.randn(b, n, h * d, generator=g)


def _assert_matches_reference(qkv, go, h, out, dqkv):
    """fp32 error budget scaled by the compared values' magnitude (as tests/ops/test_qkv_attention.py)."""
    q64 = qkv.detach().double().requires_grad_()
    ref = qkv_attention_reference(q64, h)
    (ref_d,) = torch.autograd.grad(ref, q64, go.double())
    for got, want in ((out, ref), (dqkv, ref_d)):
        mag = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.double(), want, atol=2e-5 * mag, rtol=2e-4)


def _run(qkv, go, h):
    with runs_on("native", OP, ("forward", "backward")):
        out = qkv_attention(qkv, h, backend="native")
        (dqkv,) = torch.autograd.grad(out, qkv, go)
    assert _kernel(qkv.dtype) == "tiled-avx512"
    return out, dqkv


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), n=st.sampled_from([1, 2, 6, 7, 15, 16, 17, 33, 63, 64, 65, 97]), h=st.integers(1, 3),
       d=st.sampled_from([1, 3, 15, 16, 17, 33, 48, 64, 72, 80]), spread=st.sampled_from([0.3, 1.0, 3.0]),
       seed=st.integers(0, 999))
def test_tiled_kernel_matches_reference(b, n, h, d, spread, seed):
    qkv, go = _case(b, n, h, d, seed, spread)
    out, dqkv = _run(qkv, go, h)
    assert out.shape == (b, n, h * d) and dqkv.shape == qkv.shape
    _assert_matches_reference(qkv, go, h, out, dqkv)


@pytest.mark.parametrize("n, d", [(NATIVE_MAX_TOKENS, 64), (NATIVE_MAX_TOKENS - 1, 17), (129, 128)])
def test_tiled_kernel_up_to_the_native_token_limit(n, d):
    """Several 64-column panels of scores per row and more than one panel of head dims."""
    qkv, go = _case(1, n, 2, d, 0, 1.0)
    _assert_matches_reference(qkv, go, 2, *_run(qkv, go, 2))


def test_large_logits_underflow_to_zero_not_nan():
    """Scores hundreds apart: most probabilities underflow (the exp's clamped range), none is NaN.
    There fp32 rounding of the scores alone moves the result by ~1e-3, so the error budget is
    FlashAttention's: at most 2x that of SDPA in fp32 (the dense backend) against the fp64 reference."""
    qkv, go = _case(2, 40, 2, 24, 1, 8.0)
    out, dqkv = _run(qkv, go, 2)
    assert torch.isfinite(out).all() and torch.isfinite(dqkv).all()
    q64 = qkv.detach().double().requires_grad_()
    ref = qkv_attention_reference(q64, 2)
    (ref_d,) = torch.autograd.grad(ref, q64, go.double())
    sdpa = qkv_attention(qkv, 2, backend="dense")
    (sdpa_d,) = torch.autograd.grad(sdpa, qkv, go)
    for got, base, want in ((out, sdpa, ref), (dqkv, sdpa_d, ref_d)):
        budget = 2 * (base.double() - want).abs().max().item() + 1e-6 * want.abs().max().item()
        assert (got.double() - want).abs().max().item() <= budget


def test_float64_runs_blas_kernel():
    assert _kernel(torch.float64) == "blas"


_AVX2_CODE = """
qkv = inputs["qkv"].requires_grad_()
assert torch.ops.ebsparse.qkv_attention_cpu_kernel(qkv) == "blas"
out = ebsparse.ops.qkv_attention(qkv, 3, backend="native")
(outputs["dqkv"],) = torch.autograd.grad(out, qkv, inputs["go"])
outputs["out"] = out
"""


def test_avx2_blas_kernel_agrees(tmp_path):
    """The same call with EBSPARSE_CPU_CAPABILITY=avx2 (a fresh process) runs the sgemm_ kernel;
    both kernels stay within fp32 rounding of each other."""
    qkv, go = _case(2, 33, 3, 24, 5, 1.0)
    out, dqkv = _run(qkv, go, 3)
    blas = outputs_with_capability(_AVX2_CODE, {"qkv": qkv, "go": go}, tmp_path)
    torch.testing.assert_close(out, blas["out"], atol=2e-5, rtol=2e-4)
    torch.testing.assert_close(dqkv, blas["dqkv"], atol=2e-5 * max(1.0, dqkv.abs().max().item()), rtol=2e-4)


def _probs_reference(qkv, h, scale):
    b, n, _ = qkv.shape
    q, k, _ = qkv.detach().double().reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
    return torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), n=st.sampled_from([1, 5, 16, 17, 48, 63, 64]), h=st.integers(1, 3),
       d=st.sampled_from([1, 7, 16, 33, 64, 72]), seed=st.integers(0, 999))
def test_saved_probs_match_softmax_and_recomputed_backward(b, n, h, d, seed):
    """Up to 64 tokens the forward keeps P when asked; the backward from the kept P and the one that
    recomputes it (probs=None) both give the reference's d(qkv)."""
    qkv, go = _case(b, n, h, d, seed, 1.0)
    scale = d ** -0.5
    ops = torch.ops.ebsparse
    out, lse, probs = ops.qkv_attention(qkv.detach(), h, scale, True)
    assert probs.shape == (b, h, n, n)
    torch.testing.assert_close(probs.double(), _probs_reference(qkv, h, scale), atol=2e-6, rtol=1e-4)
    q, k, _ = qkv.detach().double().reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    lse_ref = torch.logsumexp(scale * q @ k.transpose(-1, -2), dim=-1)  # the vector log's accuracy
    torch.testing.assert_close(lse.double(), lse_ref, atol=2e-6, rtol=1e-6)
    assert ops.qkv_attention(qkv.detach(), h, scale, False)[2].numel() == 0
    from_probs = ops.qkv_attention_backward(go, qkv.detach(), lse, probs, h, scale)
    recomputed = ops.qkv_attention_backward(go, qkv.detach(), lse, None, h, scale)
    _assert_matches_reference(qkv, go, h, out, from_probs)
    _assert_matches_reference(qkv, go, h, out, recomputed)


def test_probs_kept_only_for_a_backward_and_short_sequences():
    """The op keeps P when grad is on and qkv requires it (the autograd path) and N <= 64; never
    past 64 tokens, under no_grad, or in float64 (the BLAS kernel)."""
    from ebsparse.backends import registry
    from ebsparse.ops.qkv_attention import QkvAttentionInputs

    native = registry.get_backend("native")
    for n, dtype, grad, kept in ((64, torch.float32, True, True), (65, torch.float32, True, False),
                                 (64, torch.float32, False, False), (64, torch.float64, True, False)):
        qkv = torch.randn(2, n, 3 * 2 * 8, dtype=dtype)
        with torch.set_grad_enabled(grad):
            _, (lse, probs) = native.qkv_attention_forward(QkvAttentionInputs(qkv, 2, 0.5, save_probs=grad))
        assert (probs.shape == (2, 2, n, n)) == kept and (probs.numel() == 0) != kept

