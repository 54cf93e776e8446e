"""torch.library.opcheck on every op, and torch.compile(fullgraph=True) of a sparse model."""

import pytest
import torch
from torch import nn

import ebsparse
from ebsparse.formats import build_index
from tests.ops.helpers import usable_backends

CPU = torch.device("cpu")


@pytest.mark.parametrize("backend", usable_backends("linear", CPU, torch.float64))
def test_opcheck_linear(backend):
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(7, 12) < 0.4
    index = build_index(mask)
    torch.library.opcheck(torch.ops.ebsparse.sparse_linear.default,
                          (x, w, b, mask, *index.tensors(), backend, False))


@pytest.mark.parametrize("backend", usable_backends("linear", CPU, torch.float64))
def test_opcheck_linear_backward(backend):
    """The fused backward op (both gradients in one call) on its own."""
    x = torch.randn(5, 12, dtype=torch.float64)
    w = torch.randn(7, 12, dtype=torch.float64)
    dy = torch.randn(5, 7, dtype=torch.float64)
    mask = torch.rand(7, 12) < 0.4
    index = build_index(mask)
    torch.library.opcheck(torch.ops.ebsparse.sparse_linear_backward.default,
                          (dy, x, w, mask, *index.tensors(), backend))


@pytest.mark.parametrize("backend", usable_backends("conv2d", CPU, torch.float64))
def test_opcheck_conv2d(backend):
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 4, 3, 3) < 0.4
    index = build_index(mask)
    torch.library.opcheck(torch.ops.ebsparse.sparse_conv2d.default,
                          (x, w, None, mask, *index.tensors(), [1, 1], [1, 1], [1, 1], backend, False))


def test_opcheck_native_kernels():
    from ebsparse.ops.extension import extension_error

    if extension_error():
        pytest.skip(extension_error())
    x, w = torch.randn(5, 12, dtype=torch.float64), torch.randn(7, 12, dtype=torch.float64)
    index = build_index(torch.rand(7, 12) < 0.4)
    torch.library.opcheck(torch.ops.ebsparse.csr_linear.default, (x, w, None, index.row_ptr, index.col_idx))
    dy = torch.randn(5, 7, dtype=torch.float64)
    for input_grad, weight_grad in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.ebsparse.csr_linear_backward.default,
                              (dy, x, w, index.row_ptr, index.col_idx, input_grad, weight_grad))
    torch.library.opcheck(torch.ops.ebsparse.prune_2_4.default, (w,))
    xc, wc = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(3, 4, 3, 3, dtype=torch.float64)
    ic = build_index(torch.rand(3, 4, 3, 3) < 0.4)
    torch.library.opcheck(torch.ops.ebsparse.csr_conv2d.default,
                          (xc, wc, None, ic.row_ptr, ic.col_idx, [1, 1], [1, 1], [1, 1]))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ebsparse.SparseConv2d(4, 8, 3, padding=1, density=0.3)
        self.fc = ebsparse.SparseLinear(8 * 6 * 6, 10, density=0.2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = _Tiny().double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    eager = model(x)  # resolves backends eagerly
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)
