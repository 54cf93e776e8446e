"""The step breakdown's categories: by operator name, and by profiler scope where an operator's name
misleads (the dense path's 1x1 convolutions run as `bmm`, which by name is attention)."""

import pytest
import torch

from bench import breakdown
from ebsparse.backends.pointwise import pointwise_conv2d


@pytest.mark.parametrize("name, expected", [
    ("aten::convolution", "dense conv/linear"),
    ("ebsparse::csr_conv2d_grad_weight", "sparse grad-weight"),
    ("ebsparse::csr_linear_gelu_tanh", "sparse fwd"),
    ("ebsparse::csr_linear_gelu_tanh_backward", "sparse grad-weight"),
    ("ebsparse::csr_mlp_gelu_tanh", "sparse fwd"),
    ("ebsparse::csr_mlp_gelu_tanh_backward", "sparse grad-weight"),
    ("ebsparse::bsr_conv2d", "sparse fwd"),
    ("ebsparse::bsr_linear", "sparse fwd"),
    # ops that make both gradients in one call count as grad-weight, as csr_linear_backward does
    ("ebsparse::bsr_conv2d_backward", "sparse grad-weight"),
    # an autograd Function's Python body is not a convolution, whatever its name
    ("_EagerSparseConv2dBackward", "ebsparse python"),
    ("autograd::engine::evaluate_function: _EagerSparseConv2dBackward", "autograd engine"),
    ("aten::bmm", "attention"),
    ("aten::add", "elementwise/other ops"),
])
def test_operators_fall_in_their_categories(name, expected):
    assert breakdown.category(name) == expected


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


def test_goal_table_says_what_a_goal_asks_of_the_kernels():
    ms = 1e-3
    rows = {"dense": {"dense conv/linear": 900 * ms, "attention": 100 * ms},
            "sparse": {"sparse fwd": 100 * ms, "sparse grad-input": 100 * ms, "sparse grad-weight": 100 * ms,
                       "attention": 100 * ms},
            "pruned": {"dense conv/linear": 250 * ms, "attention": 240 * ms}}
    text = breakdown.goal_table(rows, {"dense": 1.0, "sparse": 0.1, "pruned": 0.25}, {"sparse": 4.0, "pruned": 3.0})
    sparse_row, pruned_row = text.splitlines()[2:]
    # sparse: 90 ms at dense's rate, 300 ms now (30%); the step would be 1000 / 190 = 5.26x; 4x leaves
    # 250 - 100 = 150 ms for 90 ms of dense-rate work: 60% of dense's rate
    assert sparse_row == "| sparse | 4.0x | 10.0% | 300 | 100 | 90 | 5.26x | 30% | 60% |"
    # pruned: 225 ms at dense's rate (90% of it now); 3x leaves 333 - 240 = 93 ms for 225: 241%
    assert pruned_row == "| pruned | 3.0x | 25.0% | 250 | 240 | 225 | 2.15x | 90% | 241% |"
    beyond = breakdown.goal_table(rows, {"dense": 1.0, "pruned": 0.25}, {"pruned": 5.0}).splitlines()[2]
    assert "beyond reach" in beyond
