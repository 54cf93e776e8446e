"""torch.library.opcheck on every op, and torch.compile(fullgraph=True) of a sparse model."""

import pytest
import torch
from torch import nn

import ebsparse
from ebsparse.backends.extension import extension_error
from ebsparse.formats import build_index
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
def test_opcheck_linear(backend):
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(7, 12) < 0.4
    index = build_index(mask)
    with runs_on(backend, "linear"):
        torch.library.opcheck(torch.ops.ebsparse.sparse_linear.default,
                              (x, w, b, mask, *index.tensors(), backend, False))


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
@pytest.mark.parametrize("input_grad,weight_grad,dense_weight_grad",
                         [(True, True, False), (True, False, False), (False, True, False), (True, True, True)])
def test_opcheck_linear_backward(backend, input_grad, weight_grad, dense_weight_grad):
    """The backward op on its own, for each combination of gradients asked for."""
    x = torch.randn(5, 12, dtype=torch.float64)
    w = torch.randn(7, 12, dtype=torch.float64)
    dy = torch.randn(5, 7, dtype=torch.float64)
    mask = torch.rand(7, 12) < 0.4
    index = build_index(mask)
    with runs_on(backend, "linear", ("backward",)):
        torch.library.opcheck(torch.ops.ebsparse.sparse_linear_backward.default,
                              (dy, x, w, mask, *index.tensors(), backend, input_grad, weight_grad,
                               dense_weight_grad))


@pytest.mark.parametrize("backend", backend_params("conv2d", CPU, torch.float64))
def test_opcheck_conv2d(backend):
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 4, 3, 3) < 0.4
    index = build_index(mask)
    with runs_on(backend, "conv2d"):
        torch.library.opcheck(torch.ops.ebsparse.sparse_conv2d.default,
                              (x, w, None, mask, *index.tensors(), [1, 1], [1, 1], [1, 1], backend, False))
    dy = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with runs_on(backend, "conv2d", ("backward",)):
        torch.library.opcheck(torch.ops.ebsparse.sparse_conv2d_backward.default,
                              (dy, x.detach(), w.detach(), mask, *index.tensors(), [1, 1], [1, 1], [1, 1], backend,
                               True, True, False))


@pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))
def test_opcheck_native_kernel_schemas():
    """The native kernel ops have no fake kernels (they run only inside the opaque public ops, whose
    fakes stand for them under torch.compile): their schemas are checked here."""
    schema_only = ("test_schema",)
    x, w = torch.randn(5, 12, dtype=torch.float64), torch.randn(7, 12, dtype=torch.float64)
    index = build_index(torch.rand(7, 12) < 0.4)
    torch.library.opcheck(torch.ops.ebsparse.csr_linear.default, (x, w, None, index.row_ptr, index.col_idx),
                          test_utils=schema_only)
    dy = torch.randn(5, 7, dtype=torch.float64)
    for input_grad, weight_grad in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.ebsparse.csr_linear_backward.default,
                              (dy, x, w, index.row_ptr, index.col_idx, input_grad, weight_grad), test_utils=schema_only)
    torch.library.opcheck(torch.ops.ebsparse.prune_2_4.default, (w,), test_utils=schema_only)
    xc, wc = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(3, 4, 3, 3, dtype=torch.float64)
    ic = build_index(torch.rand(3, 4, 3, 3) < 0.4)
    torch.library.opcheck(torch.ops.ebsparse.csr_conv2d.default,
                          (xc, wc, None, ic.row_ptr, ic.col_idx, [1, 1], [1, 1], [1, 1]), test_utils=schema_only)


class _Tiny(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.conv = ebsparse.SparseConv2d(4, 8, 3, padding=1, density=0.3, backend=backend)
        self.fc = ebsparse.SparseLinear(8 * 6 * 6, 10, density=0.2, backend=backend)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
def test_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    model = _Tiny(backend).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    eager = model(x)  # resolves backends eagerly
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with runs_on(backend, "linear", ("forward", "backward")), runs_on(backend, "conv2d", ("forward", "backward")):
        out = compiled(x)
        out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_compile_before_any_eager_call_runs_dense():
    """A model compiled before it ever ran eagerly has no resolved backend and no cached pattern:
    auto layers run dense, and the result matches eager."""
    torch.manual_seed(0)
    model = _Tiny(None).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with runs_on("dense", "linear"), runs_on("dense", "conv2d"):
        out = compiled(x)
    torch.testing.assert_close(out, model(x))
