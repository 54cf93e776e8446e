"""The step breakdown's categories: by operator name, and by profiler scope where an operator's name
misleads (the dense path's 1x1 convolutions run as `bmm`, which by name is attention)."""

import torch

from bench import breakdown
from ebsparse.backends.pointwise import pointwise_conv2d


def test_operators_fall_in_their_named_categories():
    assert breakdown.category("aten::convolution") == "dense conv/linear"
    assert breakdown.category("ebsparse::csr_conv2d_grad_weight") == "sparse grad-weight"
    assert breakdown.category("ebsparse::csr_linear_gelu_tanh") == "sparse fwd"
    assert breakdown.category("ebsparse::csr_linear_gelu_tanh_backward") == "sparse grad-weight"
    assert breakdown.category("aten::bmm") == "attention"
    assert breakdown.category("aten::add") == "elementwise/other ops"


def test_pointwise_conv_products_count_as_convolutions_not_attention():
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    w = torch.randn(6, 8, 1, 1, requires_grad=True)
    q = torch.randn(2, 5, 3)

    def step():
        pointwise_conv2d(x, w, None).sum().backward()  # bmm under the scope, forward and backward
        torch.bmm(q, q.transpose(1, 2))  # a bmm outside it stays attention

    seconds = breakdown.profile_step(step)
    assert seconds["dense conv/linear"] > 0
    assert seconds["attention"] > 0
    with torch.profiler.profile() as prof:
        step()
    scoped = [e for e in prof.events() if e.name == "aten::bmm" and breakdown._scope(e) == "dense conv/linear"]
    assert len(scoped) == 3  # forward, grad-input, grad-weight
