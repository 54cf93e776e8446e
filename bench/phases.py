"""The sparse kernels one phase at a time (forward, grad-input, grad-weight, and linear's fused
"both gradients"), each next to the dense ATen call that does the same job (MKL matmul / oneDNN
convolution), on the shapes of bench/settings.py.

Why next to the training-step rows: a step also pays autograd, the module and the memory passes
around the kernels (transposes, the dense-shaped weight gradient), which a user cannot avoid but
which hide how far each kernel is from dense. These rows say which phase holds a step back.

`kernels` is a namespace holding the ``csr_*`` kernels with the schemas of ``csrc/schemas.cpp``:
``torch.ops.ebsparse`` (the default), another build's (``bench.compare_builds``), or
``ebsparse.triton`` (which has no fused "both gradients").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.providers import make_mask
from bench.settings import CONV_SHAPES, LINEAR_SHAPES, SPARSE_SPARSITIES, ConvShape, LinearShape
from ebsparse.backends.extension import extension_error
from ebsparse.formats import build_index

SPARSITIES = SPARSE_SPARSITIES  # what compare_builds compares


def native_kernels():
    """``torch.ops.ebsparse`` with the kernels registered (importing ebsparse does not load them)."""
    error = extension_error()
    if error is not None:
        raise RuntimeError(error)
    return torch.ops.ebsparse
LINEAR_PHASES = ["forward", "grad-input", "grad-weight", "both gradients"]
CONV_PHASES = ["forward", "grad-input", "grad-weight"]


def linear_calls(sparsity, op=None, shape: LinearShape | None = None, device="cpu"):
    """(sparse calls by phase, dense calls by phase, useful GFLOP of one forward-sized phase);
    `op`: the kernels' namespace (see the module docstring)."""
    op = op or native_kernels()
    s = shape or LINEAR_SHAPES[0]
    torch.manual_seed(0)
    x = torch.randn(s.batch, s.in_features, device=device)
    w = torch.randn(s.out_features, s.in_features, device=device)
    dy = torch.randn(s.batch, s.out_features, device=device)
    mask = make_mask(w, sparsity)
    w = (w * mask).contiguous()
    rp, ci, cp, ri = (t.to(device) for t in build_index(mask.cpu()).tensors())
    sparse = {"forward": lambda: op.csr_linear(x, w, None, rp, ci),
              "grad-input": lambda: op.csr_linear_grad_input(dy, w, cp, ri),
              "grad-weight": lambda: op.csr_linear_grad_weight(dy, x, rp, ci)}
    if hasattr(op, "csr_linear_backward"):
        sparse["both gradients"] = lambda: op.csr_linear_backward(dy, x, w, rp, ci, True, True)
    dense = {"forward": lambda: F.linear(x, w), "grad-input": lambda: dy.mm(w),
             "grad-weight": lambda: dy.t().mm(x), "both gradients": lambda: (dy.mm(w), dy.t().mm(x))}
    return sparse, dense, 2 * int(mask.sum()) * s.batch / 1e9


def conv_calls(sparsity, op=None, shape: ConvShape | None = None, device="cpu"):
    """As linear_calls, for a conv shape (stride 1, dilation 1)."""
    op = op or native_kernels()
    s = shape or CONV_SHAPES[0]
    torch.manual_seed(0)
    out_size = s.size + 2 * s.padding - s.kernel + 1
    x = torch.randn(s.batch, s.in_channels, s.size, s.size, device=device)
    w = torch.randn(s.out_channels, s.in_channels, s.kernel, s.kernel, device=device)
    dy = torch.randn(s.batch, s.out_channels, out_size, out_size, device=device)
    mask = make_mask(w, sparsity)
    w = (w * mask).contiguous()
    rp, ci, cp, ri = (t.to(device) for t in build_index(mask.cpu().reshape(s.out_channels, -1)).tensors())
    one, pad = [1, 1], [s.padding, s.padding]
    sparse = {"forward": lambda: op.csr_conv2d(x, w, None, rp, ci, one, pad, one),
              "grad-input": lambda: op.csr_conv2d_grad_input(dy, w, cp, ri, list(x.shape), one, pad, one),
              "grad-weight": lambda: op.csr_conv2d_grad_weight(dy, x, rp, ci, list(w.shape), one, pad, one)}

    def conv_backward(which):
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, one, pad, one, False, [0, 0], 1,
                                                           [which == 0, which == 1, False])

    dense = {"forward": lambda: F.conv2d(x, w, None, 1, s.padding), "grad-input": conv_backward(0),
             "grad-weight": conv_backward(1)}
    return sparse, dense, 2 * int(mask.sum()) * s.batch * s.output_pixels / 1e9
