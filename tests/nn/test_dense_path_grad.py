"""The dense path of SparseLinear / SparseConv2d (the dense backend's kernels on the masked weight)
gives the reference's gradients: the weight's at kept positions (zero elsewhere), the input's and the
bias's.

Every op phase is traced, so these tests fail unless the dense backend ran forward and backward.
"""

import pytest
import torch
from torch import nn

from ebsparse.nn import SparseConv2d, SparseLinear
from ebsparse.ops.reference import sparse_conv2d_reference, sparse_linear_reference
from tests.ops.helpers import runs_on

BOTH_PHASES = ("forward", "backward")


def _random_mask(shape, density, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def _check_grads(layer, ref_weight, ref_bias, x, x_ref, mask):
    assert layer.weight.grad is not None, "no gradient reached the weight on the dense path"
    assert torch.allclose(layer.weight.grad[mask], ref_weight.grad[mask], rtol=1e-10, atol=1e-12)
    assert (layer.weight.grad[~mask] == 0).all()
    assert (layer.weight.grad[mask] != 0).any()  # the comparison above is not between zeros
    assert torch.allclose(layer.bias.grad, ref_bias.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pattern,density", [("unstructured", 0.3), ("2:4", None)])
def test_linear_dense_path_weight_gradient_matches_the_reference(pattern, density):
    torch.manual_seed(0)
    mask = _random_mask((6, 8), 0.3, 1) if pattern == "unstructured" else None
    layer = SparseLinear(8, 6, dtype=torch.float64, pattern=pattern, density=density, mask=mask, backend="dense")
    mask = layer.mask.clone()
    w = nn.Parameter(layer.weight.detach().clone())
    b = nn.Parameter(layer.bias.detach().clone())
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(5, 6, dtype=torch.float64)
    with runs_on("dense", "linear", phases=BOTH_PHASES):
        (layer(x) * g).sum().backward()
    (sparse_linear_reference(x_ref, w, b, mask) * g).sum().backward()
    _check_grads(layer, w, b, x, x_ref, mask)


def test_conv_dense_path_weight_gradient_matches_the_reference():
    torch.manual_seed(0)
    mask = _random_mask((4, 3, 3, 3), 0.4, 2)
    layer = SparseConv2d(3, 4, 3, padding=1, stride=2, dtype=torch.float64, mask=mask, backend="dense")
    w = nn.Parameter(layer.weight.detach().clone())
    b = nn.Parameter(layer.bias.detach().clone())
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    with runs_on("dense", "conv2d", phases=BOTH_PHASES):
        y = layer(x)
        g = torch.randn(y.shape, dtype=torch.float64)
        (y * g).sum().backward()
    (sparse_conv2d_reference(x_ref, w, b, mask, stride=2, padding=1) * g).sum().backward()
    _check_grads(layer, w, b, x, x_ref, mask)
