"""The native kernels one phase at a time (forward, grad-input, grad-weight), each timed alternately
with the dense ATen op that does the same job (MKL matmul / oneDNN convolution), on the shapes of
test_kernels.py.

Why next to the training-step rows: a step also pays autograd, the module and the memory passes
around the kernels (transposes, the dense-shaped weight gradient), which a user cannot avoid but
which hide how far each kernel is from dense. These rows say which phase holds a step back.
"""

import pytest
import torch
import torch.nn.functional as F

from bench.providers import ROUNDS, make_mask, paired_minimum
from ebsparse.formats import build_index

SPARSITIES = [0.9, 0.95, "2:4"]
PHASES = ["forward", "grad-input", "grad-weight"]


def linear_calls(sparsity, op=None):
    """(sparse calls by phase, dense calls by phase, useful GFLOP of one phase); `op`: the op
    namespace (torch.ops.ebsparse unless another build's, see compare_builds.py). The "both
    gradients" phase (the fused backward) is compared by compare_builds; the table here keeps
    PHASES."""
    op = op or torch.ops.ebsparse
    torch.manual_seed(0)
    x, w, dy = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.randn(1024, 1024)
    mask = make_mask(w, sparsity)
    w = (w * mask).contiguous()
    rp, ci, cp, ri = build_index(mask).tensors()
    sparse = {"forward": lambda: op.csr_linear(x, w, None, rp, ci),
              "grad-input": lambda: op.csr_linear_grad_input(dy, w, cp, ri),
              "grad-weight": lambda: op.csr_linear_grad_weight(dy, x, rp, ci),
              "both gradients": lambda: op.csr_linear_backward(dy, x, w, rp, ci, True, True)}
    dense = {"forward": lambda: F.linear(x, w), "grad-input": lambda: dy.mm(w),
             "grad-weight": lambda: dy.t().mm(x), "both gradients": lambda: (dy.mm(w), dy.t().mm(x))}
    return sparse, dense, 2 * int(mask.sum()) * 1024 / 1e9


def conv_calls(sparsity, op=None):
    """As linear_calls, for the conv shape."""
    op = op or torch.ops.ebsparse
    torch.manual_seed(0)
    x, w, dy = torch.randn(8, 256, 32, 32), torch.randn(256, 256, 3, 3), torch.randn(8, 256, 32, 32)
    mask = make_mask(w, sparsity)
    w = (w * mask).contiguous()
    rp, ci, cp, ri = build_index(mask.reshape(256, -1)).tensors()
    one, pad = [1, 1], [1, 1]
    sparse = {"forward": lambda: op.csr_conv2d(x, w, None, rp, ci, one, pad, one),
              "grad-input": lambda: op.csr_conv2d_grad_input(dy, w, cp, ri, list(x.shape), one, pad, one),
              "grad-weight": lambda: op.csr_conv2d_grad_weight(dy, x, rp, ci, list(w.shape), one, pad, one)}

    def conv_backward(which):
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, one, pad, one, False, [0, 0], 1,
                                                           [which == 0, which == 1, False])

    dense = {"forward": lambda: F.conv2d(x, w, None, 1, 1), "grad-input": conv_backward(0),
             "grad-weight": conv_backward(1)}
    return sparse, dense, 2 * int(mask.sum()) * 8 * 32 * 32 / 1e9


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_native_op_phase(record, layer, sparsity, phase):
    sparse, dense, gflop = (linear_calls if layer == "linear" else conv_calls)(sparsity)
    seconds, dense_seconds = paired_minimum(sparse[phase], dense[phase], ROUNDS[layer])
    record(f"{layer} op {phase} sparsity={sparsity}", "ebsparse-native (kernel only)", seconds, gflop,
           baseline=dense_seconds)
