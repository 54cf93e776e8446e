"""The native CPU kernels give the same bits on every call with the same inputs and thread count.

The sparse layers' weight and bias gradients are sums over tasks that two threads share. Summed per
thread, they changed in their last bits from call to call (whichever thread took which task), so two
runs of `ebsparse train` at two threads drifted apart and `--resume` was not exact. Each case below
runs an op's forward and backward repeatedly at two threads, on shapes with enough tasks for both
threads, and compares every output bit for bit with the first call's: the sparse layers, and the
other native ops a model's step runs (attention, norms, activations, dropout at a fixed seed).
"""

from __future__ import annotations

import pytest
import torch

from ebsparse import ops
from ebsparse.backends.extension import extension_error
from ebsparse.formats import local_layout
from ebsparse.formats.block import random_block_mask
from ebsparse.ops.linear_gelu_tanh import sparse_linear_gelu_tanh
from ebsparse.ops.residual_norm_modulate import residual_norm_modulate
from tests.ops.helpers import runs_on
from tests.ops.mlp_gelu_tanh_cases import Threads

pytestmark = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))

CALLS = 12


def _mask(shape, density, g):
    return torch.rand(shape, generator=g) < density


def _conv(stride):
    def case(g):
        x = torch.randn(8, 64, 16, 16, generator=g)
        w, b = torch.randn(64, 64, 3, 3, generator=g), torch.randn(64, generator=g)
        mask = _mask(w.shape, 0.2, g)
        return "conv2d", (x, w, b), lambda x, w, b: ops.sparse_conv2d(x, w, b, mask, stride, 1, backend="native")

    return case


def _linear(g):
    x = torch.randn(512, 96, generator=g)
    w, b = torch.randn(80, 96, generator=g), torch.randn(80, generator=g)
    mask = _mask(w.shape, 0.3, g)
    return "linear", (x, w, b), lambda x, w, b: ops.sparse_linear(x, w, b, mask, backend="native")


def _block_conv(kernel):
    def case(g):
        x = torch.randn(8, 64, 16, 16, generator=g)
        w, b = torch.randn(64, 64, kernel, kernel, generator=g), torch.randn(64, generator=g)
        mask = random_block_mask(w.shape, 0.25, (16, 16), generator=g)
        return "block_conv2d", (x, w, b), lambda x, w, b: ops.block_sparse_conv2d(
            x, w, b, mask, (16, 16), 1, kernel // 2, backend="native")

    return case


def _block_linear(block):
    def case(g):
        x = torch.randn(512, 128, generator=g)
        w = torch.randn(128, 128, generator=g)
        mask = random_block_mask(w.shape, 0.25, block, generator=g)
        return "block_linear", (x, w), lambda x, w: ops.block_sparse_linear(x, w, None, mask, block, backend="native")

    return case


def _mlp(g):
    x = torch.randn(512, 48, generator=g)
    w1, b1, w2, b2 = (torch.randn(96, 48, generator=g), torch.randn(96, generator=g),
                      torch.randn(40, 96, generator=g), torch.randn(40, generator=g))
    m1, m2 = _mask(w1.shape, 0.3, g), _mask(w2.shape, 0.3, g)
    return "mlp_gelu_tanh", (x, w1, b1, w2, b2), lambda x, w1, b1, w2, b2: ops.sparse_mlp_gelu_tanh(
        x, w1, b1, m1, w2, b2, m2, backend="native")


def _linear_gelu(g):
    x, w, b = torch.randn(512, 48, generator=g), torch.randn(96, 48, generator=g), torch.randn(96, generator=g)
    mask = _mask(w.shape, 0.3, g)
    return "linear_gelu_tanh", (x, w, b), lambda x, w, b: sparse_linear_gelu_tanh(x, w, b, mask, backend="native")


def _block_attention(g):
    q, k, v = (torch.randn(4, 2, 128, 32, generator=g) for _ in range(3))
    return "block_attention", (q, k, v), lambda q, k, v: ops.block_sparse_attention(
        q, k, v, local_layout(8, 2), 16, backend="native")


def _qkv_attention(g):
    return "qkv_attention", (torch.randn(16, 64, 3 * 128, generator=g),), lambda qkv: ops.qkv_attention(
        qkv, 2, backend="native")


def _group_norm_silu(g):
    x, w, b = torch.randn(8, 64, 16, 16, generator=g), torch.randn(64, generator=g), torch.randn(64, generator=g)
    return "group_norm_silu", (x, w, b), lambda x, w, b: ops.group_norm_silu(x, 16, w, b, backend="native")


def _adaln(which):
    def case(g):
        x, branch = torch.randn(16, 64, 128, generator=g), torch.randn(16, 64, 128, generator=g)
        shift, scale, gate = (torch.randn(16, 128, generator=g) for _ in range(3))
        if which == "layer_norm_modulate":
            return which, (x, shift, scale), lambda x, s, c: ops.layer_norm_modulate(x, s, c, backend="native")
        if which == "gated_residual":
            return which, (x, gate, branch), lambda x, a, b: ops.gated_residual(x, a, b, backend="native")
        return which, (x, gate, branch, shift, scale), lambda x, a, b, s, c: residual_norm_modulate(
            x, a, b, s, c, backend="native")[1]

    return case


def _elementwise(which):
    def case(g):
        x = torch.randn(64, 1000, generator=g)
        if which == "gelu_tanh":
            return which, (x,), lambda x: ops.gelu_tanh(x, backend="native")
        return which, (x,), lambda x: ops.dropout(x, 0.1, generator=torch.Generator().manual_seed(3), backend="native")

    return case


CASES = {
    "conv": _conv(1),
    "conv-stride-2": _conv(2),
    "linear": _linear,
    "block-conv-3x3": _block_conv(3),
    "block-conv-1x1": _block_conv(1),
    "block-linear-32x32": _block_linear((32, 32)),
    "block-linear-16x16": _block_linear((16, 16)),
    "mlp": _mlp,
    "linear-gelu": _linear_gelu,
    "block-attention": _block_attention,
    "qkv-attention": _qkv_attention,
    "group-norm-silu": _group_norm_silu,
    "layer-norm-modulate": _adaln("layer_norm_modulate"),
    "gated-residual": _adaln("gated_residual"),
    "residual-norm-modulate": _adaln("residual_norm_modulate"),
    "gelu-tanh": _elementwise("gelu_tanh"),
    "dropout": _elementwise("dropout"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_bits_on_every_call(case):
    g = torch.Generator().manual_seed(0)
    op, inputs, fn = CASES[case](g)
    inputs = [t.requires_grad_() for t in inputs]
    with Threads(2), runs_on("native", op, ("forward", "backward")):
        y = fn(*inputs)
        dy = torch.randn(y.shape, generator=g)
        first = None
        for _ in range(CALLS):
            y = fn(*inputs)
            grads = torch.autograd.grad(y, inputs, dy)
            outputs = [y.detach(), *grads]
            if first is None:
                first = outputs
                continue
            for name, a, b in zip(["output", *(f"grad {i}" for i in range(len(inputs)))], first, outputs, strict=True):
                assert torch.equal(a, b), f"{case}: {name} differs between calls by {(a - b).abs().max().item():.3g}"
