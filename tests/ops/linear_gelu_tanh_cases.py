"""The fused fc1 + tanh-GELU kernels on one problem against the fp64 reference: shared by
test_linear_gelu_tanh.py and, loaded by path in a fresh process, its AVX2 run (so this file imports
nothing from tests/)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ebsparse.backends.extension import extension_error
from ebsparse.formats import build_index
from ebsparse.ops.linear_gelu_tanh import sparse_linear_gelu_tanh_reference


def tol(dtype, scale):
    # fp32: a sum of `scale` products of unit values, then the GELU and its slope (|slope| < 1.2)
    return dict(atol=1e-12 * scale, rtol=1e-10) if dtype == torch.float64 else dict(atol=3e-5 * scale, rtol=3e-5)


def problem(n, k, m, density, dtype, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=dtype)
    w = torch.randn(m, k, generator=g, dtype=dtype) / max(1, k) ** 0.5 * 2
    b = torch.randn(m, generator=g, dtype=dtype) if bias else None
    mask = torch.rand(m, k, generator=g) < density
    if density == 1.0:
        mask[:] = True
    ga = torch.randn(n, m, generator=g, dtype=dtype)
    return x, w, b, mask, ga


def reference_grads(x, w, b, mask, ga):
    """(act, dx, dw, db) in fp64 through autograd of the pure-PyTorch reference."""
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = b.double().requires_grad_() if b is not None else None
    act = sparse_linear_gelu_tanh_reference(x64, w64, b64, mask)
    grads = torch.autograd.grad(act, [t for t in (x64, w64, b64) if t is not None], ga.double())
    return (act.detach(), *grads) + ((None,) if b is None else ())


class Threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)
        return False


ops = torch.ops.ebsparse if extension_error() is None else None


def check_kernels(cases):
    """Every gradient subset of the kernel ops against the reference on (n, k, m, density, threads)."""
    for n, k, m, density, threads in cases:
        x, w, b, mask, ga = problem(n, k, m, density, torch.float32, True, n + k + m)
        rp, ci, _, _ = build_index(mask).tensors()
        ref = reference_grads(x, w, b, mask, ga)
        with Threads(threads):
            act, pre = ops.csr_linear_gelu_tanh(x, w, b, rp, ci)
            torch.testing.assert_close(pre.double(), F.linear(x.double(), (w * mask).double(), b.double()),
                                       **tol(torch.float32, k))
            torch.testing.assert_close(act.double(), ref[0], **tol(torch.float32, k))
            for wanted in [(True, True, True), (True, False, False), (False, True, False), (False, False, True),
                           (True, False, True)]:
                got = ops.csr_linear_gelu_tanh_backward(ga, pre, x, w, rp, ci, *wanted)
                for want, g, r, scale in zip(wanted, got, ref[1:], (m, n, n)):
                    if want:
                        torch.testing.assert_close(g.double(), r, **tol(torch.float32, scale))
                    else:
                        assert g.numel() == 0


# (batch, in, out, density, threads): per-thread chunks (one and two threads, a ragged last chunk),
# the small-batch path, empty and full patterns.
KERNEL_CASES = [(777, 53, 131, 0.5, 1), (900, 30, 67, 0.05, 2), (640, 40, 48, 1.0, 2), (520, 33, 17, 0.0, 1),
                (70, 64, 64, 0.3, 2), (0, 5, 7, 0.5, 1)]
