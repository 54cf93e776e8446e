"""block_sparse_attention as torch.library ops: opcheck of the forward and backward ops on every
backend that runs here, and torch.compile(fullgraph=True) of a model using it (forward and
backward equal to eager, on the backend named)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebsparse.formats.block_layout import dense_mask, local_layout
from ebsparse.ops import block_sparse_attention, block_sparse_attention_reference
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")
OP = "block_attention"


def _qkv(b, h, n, d, seed, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
            for _ in range(3)]


def _layout_with_dropped_row(heads, nb):
    lay = local_layout(nb, 1).unsqueeze(0).repeat(heads, 1, 1)
    lay[0, 0] = False  # a query block with no kept key: its lse is -inf, its output 0
    return lay


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_opcheck_forward(backend):
    q, k, v = _qkv(1, 2, 37, 5, 0)  # 37 tokens: a short last block
    layout = _layout_with_dropped_row(2, 3)
    with runs_on(backend, OP, ("forward", "backward")):
        torch.library.opcheck(torch.ops.ebsparse.block_sparse_attention.default,
                              (q, k, v, layout, 16, 5 ** -0.5, backend))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_opcheck_backward(backend):
    q, k, v = _qkv(2, 1, 20, 3, 1, requires_grad=False)
    layout = torch.tensor([[[True, False], [True, True]]])
    out, lse = torch.ops.ebsparse.block_sparse_attention(q, k, v, layout, 16, 0.5, backend)
    assert lse.shape == q.shape[:3] and torch.isfinite(lse).all()
    grad_out = torch.randn_like(out)
    with runs_on(backend, OP, ("backward",)):
        torch.library.opcheck(torch.ops.ebsparse.block_sparse_attention_backward.default,
                              (grad_out, q, k, v, out, lse, layout, 16, 0.5, backend))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_op_matches_reference(backend):
    """Every backend's op returns the reference output and the same lse (the log-sum-exp of each
    row's kept scores, -inf on dropped rows), so its backward op reads what any forward returned."""
    q, k, v = _qkv(1, 2, 40, 4, 2, requires_grad=False)
    layout = _layout_with_dropped_row(2, 3)
    out, lse = torch.ops.ebsparse.block_sparse_attention(q, k, v, layout, 16, 0.5, backend)
    mask = dense_mask(layout, 40, 40, 16).unsqueeze(0)
    ref_lse = (torch.matmul(q, k.transpose(-1, -2)) * 0.5).masked_fill(~mask, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, layout, 16, 0.5))
    torch.testing.assert_close(lse, ref_lse)
    assert torch.isneginf(lse[:, 0, :16]).all()


class _TinyAttention(nn.Module):
    """One self-attention with a qkv projection, as our DiT computes it."""

    def __init__(self, dim, heads, layout, block_size, backend):
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads
        self.layout, self.block_size, self.backend = layout, block_size, backend

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = block_sparse_attention(q, k, v, self.layout, self.block_size, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    model = _TinyAttention(12, 2, _layout_with_dropped_row(2, 3), 16, backend).double()
    x = torch.randn(2, 45, 12, dtype=torch.float64)
    eager = model(x)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with runs_on(backend, OP, ("forward", "backward")):
        out = compiled(x)
        out.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_compile_unnamed_backend_runs_dense():
    """Under torch.compile an unnamed backend runs dense (as for the layer ops), matching eager."""
    torch.manual_seed(0)
    model = _TinyAttention(8, 2, local_layout(2, 0), 16, None).double()
    x = torch.randn(1, 32, 8, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with runs_on("dense", OP):
        out = compiled(x)
    torch.testing.assert_close(out, model(x))


@pytest.mark.parametrize("backend", [p for p in backend_params(OP, CPU, torch.float64) if p.values[0] != "dense"])
def test_second_order_gradient_is_refused(backend):
    """A kernel backend's gradient is not differentiable again: create_graph=True raises (the dense
    path is SDPA's own autograd)."""
    q, k, v = _qkv(1, 1, 16, 4, 3)
    out = block_sparse_attention(q, k, v, torch.ones(1, 1, dtype=torch.bool), 16, backend=backend)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
