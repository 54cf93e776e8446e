"""Eager calls run through a plain autograd.Function, the custom ops only under
torch.compile: both must give the same outputs and gradients, and eager must really take the fast way."""

import pytest
import torch

from ebsparse.formats import build_index
from ebsparse.ops import sparse_conv2d, sparse_linear
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")


def _node_names(out: torch.Tensor) -> set[str]:
    """Names of the autograd nodes that produced `out`."""
    names, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo.extend(fn for fn, _ in node.next_functions)
    return names


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
def test_linear_eager_function_matches_custom_op(backend, with_bias):
    torch.manual_seed(0)
    x, w, b = torch.randn(6, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    mask = torch.rand(5, 10) < 0.4
    index = build_index(mask)
    dy = torch.randn(6, 5, dtype=torch.float64)

    xe, we, be = _leaves(x, w, b)
    with runs_on(backend, "linear", ("forward", "backward")):
        out_eager = sparse_linear(xe, we, be if with_bias else None, mask, index=index, backend=backend)
        assert "_EagerSparseLinearBackward" in _node_names(out_eager)
        out_eager.backward(dy)

    xo, wo, bo = _leaves(x, w, b)
    with runs_on(backend, "linear", ("forward", "backward")):
        out_op = torch.ops.ebsparse.sparse_linear(xo, wo, bo if with_bias else None, mask, *index.tensors(), backend,
                                                  False)
        out_op.backward(dy)

    torch.testing.assert_close(out_eager, out_op)
    torch.testing.assert_close(xe.grad, xo.grad)
    torch.testing.assert_close(we.grad, wo.grad)
    if with_bias:
        torch.testing.assert_close(be.grad, bo.grad)


@pytest.mark.parametrize("backend", backend_params("conv2d", CPU, torch.float64))
def test_conv2d_eager_function_matches_custom_op(backend):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 7, 6, dtype=torch.float64), torch.randn(3, 4, 3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    mask = torch.rand(3, 4, 3, 3) < 0.4
    index = build_index(mask)

    xe, we, be = _leaves(x, w, b)
    with runs_on(backend, "conv2d", ("forward", "backward")):
        out_eager = sparse_conv2d(xe, we, be, mask, stride=1, padding=1, index=index, backend=backend)
        assert "_EagerSparseConv2dBackward" in _node_names(out_eager)
        out_eager.sum().backward()  # an expanded grad_output, made dense once for both kernels

    xo, wo, bo = _leaves(x, w, b)
    with runs_on(backend, "conv2d", ("forward", "backward")):
        out_op = torch.ops.ebsparse.sparse_conv2d(xo, wo, bo, mask, *index.tensors(), [1, 1], [1, 1], [1, 1], backend,
                                                  False)
        out_op.sum().backward()

    torch.testing.assert_close(out_eager, out_op)
    for eager, op in ((xe, xo), (we, wo), (be, bo)):
        torch.testing.assert_close(eager.grad, op.grad)


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
def test_linear_eager_dense_weight_grad_and_input_only(backend):
    """The two other gradient branches: the full weight gradient (RigL) and input gradient alone."""
    torch.manual_seed(1)
    x, w = torch.randn(4, 8, dtype=torch.float64, requires_grad=True), torch.randn(3, 8, dtype=torch.float64)
    mask = torch.rand(3, 8) < 0.5
    wg = w.clone().requires_grad_()
    with runs_on(backend, "linear", ("forward", "backward")):
        sparse_linear(x, wg, None, mask, backend=backend, dense_weight_grad=True).sum().backward()
    torch.testing.assert_close(wg.grad, torch.ones(4, 3, dtype=torch.float64).t() @ x.detach())
    x.grad = None
    with runs_on(backend, "linear", ("forward", "backward")):
        sparse_linear(x, w, None, mask, backend=backend).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(4, 3, dtype=torch.float64) @ (w * mask))
