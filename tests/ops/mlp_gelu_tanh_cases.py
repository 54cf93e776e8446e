"""The fused sparse MLP kernels (fc1 -> tanh-GELU -> fc2) on one problem against the fp64 reference:
shared by test_mlp_gelu_tanh.py and, loaded by path in a fresh process, its AVX2 run (so this file
imports nothing from tests/)."""

from __future__ import annotations

import torch

from ebsparse.backends.extension import extension_error
from ebsparse.formats import build_index
from ebsparse.ops.mlp_gelu_tanh import sparse_mlp_gelu_tanh_reference


def tol(dtype, scale):
    # fp32: sums of `scale` products of unit-sized values through a GELU (|slope| < 1.2)
    return dict(atol=1e-12 * scale, rtol=1e-10) if dtype == torch.float64 else dict(atol=4e-5 * scale, rtol=4e-5)


def problem(n, k, h, m, densities, dtype, biases, seed):
    """x (n, k); fc1 (h, k) and fc2 (m, h) at `densities`, with biases where `biases` says; dy (n, m)."""
    g = torch.Generator().manual_seed(seed)

    def layer(rows, cols, density, bias):
        w = torch.randn(rows, cols, generator=g, dtype=dtype) / max(1, cols) ** 0.5 * 2
        mask = torch.rand(rows, cols, generator=g) < density
        if density == 1.0:
            mask[:] = True
        return w, torch.randn(rows, generator=g, dtype=dtype) if bias else None, mask

    x = torch.randn(n, k, generator=g, dtype=dtype)
    w1, b1, mask1 = layer(h, k, densities[0], biases[0])
    w2, b2, mask2 = layer(m, h, densities[1], biases[1])
    dy = torch.randn(n, m, generator=g, dtype=dtype)
    return x, (w1, b1, mask1), (w2, b2, mask2), dy


def reference(x, fc1, fc2, dy):
    """(y, dx, dw1, db1, dw2, db2) in fp64 through autograd of the pure-PyTorch reference (None for
    an absent bias)."""
    x64 = x.double().requires_grad_()
    params = [t.double().requires_grad_() if t is not None else None for t in (fc1[0], fc1[1], fc2[0], fc2[1])]
    y = sparse_mlp_gelu_tanh_reference(x64, params[0], params[1], fc1[2], params[2], params[3], fc2[2])
    leaves = [x64] + [p for p in params if p is not None]
    grads = iter(torch.autograd.grad(y, leaves, dy.double()))
    dx = next(grads)
    return (y.detach(), dx, *(next(grads) if p is not None else None for p in params))


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

# Every (input_grad, weight_grad, bias1_grad, bias2_grad) subset the backward op is asked for.
WANTED = [(True, True, True, True), (True, False, False, False), (False, True, False, False),
          (False, False, True, False), (False, False, False, True), (False, True, True, True), (True, True, False, False)]


def check_kernels(cases):
    """Every gradient subset of the kernel ops against the reference on (n, k, h, m, densities, threads)."""
    for n, k, h, m, densities, threads in cases:
        x, fc1, fc2, dy = problem(n, k, h, m, densities, torch.float32, (True, True), n + k + h + m)
        rp1, ci1, _, _ = build_index(fc1[2]).tensors()
        rp2, ci2, _, _ = build_index(fc2[2]).tensors()
        ref = reference(x, fc1, fc2, dy)
        with Threads(threads):
            y, pre = ops.csr_mlp_gelu_tanh(x, fc1[0], fc1[1], rp1, ci1, fc2[0], fc2[1], rp2, ci2)
            torch.testing.assert_close(y.double(), ref[0], **tol(torch.float32, k + h))
            for wanted in WANTED:
                got = ops.csr_mlp_gelu_tanh_backward(dy, pre, x, fc1[0], rp1, ci1, fc2[0], rp2, ci2, *wanted)
                want = (wanted[0], wanted[1], wanted[2], wanted[1], wanted[3])
                for w, g, r, scale in zip(want, got, ref[1:], (m + h, n, n, n, n)):
                    if w:
                        torch.testing.assert_close(g.double(), r, **tol(torch.float32, scale))
                    else:
                        assert g.numel() == 0


# (batch, in, hidden, out, densities, threads): per-thread chunks (one and two threads, a ragged last
# chunk and an odd number of row blocks), empty and full patterns, a batch below one chunk, none.
KERNEL_CASES = [(777, 53, 131, 29, (0.5, 0.3), 1), (900, 30, 67, 41, (0.05, 0.2), 2),
                (640, 40, 48, 40, (1.0, 1.0), 2), (520, 33, 17, 9, (0.0, 0.5), 1), (330, 12, 20, 16, (0.4, 0.0), 2),
                (70, 64, 64, 64, (0.3, 0.3), 2), (0, 5, 7, 3, (0.5, 0.5), 1)]
