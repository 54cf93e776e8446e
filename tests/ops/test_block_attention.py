"""block_sparse_attention against the pure-PyTorch reference (plain softmax with the layout's dense
mask), on every backend that runs here (native C++ on the CPU, Triton under the interpreter, dense
SDPA): hypothesis over heads, head widths (odd ones too), token counts that are not a multiple of
the block, layouts with fully dropped rows; fp32 and fp64, gradients, gradcheck in fp64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebsparse.formats.block_layout import dense_mask, layout_csr, local_layout, strided_layout
from ebsparse.ops import block_sparse_attention, block_sparse_attention_reference
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")
OP = "block_attention"


def _tol(dtype):
    return dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-4)


def _layout(draw_bits, heads_layout, nb):
    g = torch.Generator().manual_seed(draw_bits)
    lay = torch.rand(heads_layout, nb, nb, generator=g) < 0.5
    lay[:, 0] = False  # a query block with no kept key block: defined output (0), no NaN
    return lay if heads_layout > 1 else lay[0]


def _qkv(b, h, n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


def _check(backend, dtype, b, h, n, d, block, per_head, seed):
    nb = -(-n // block)
    layout = _layout(seed, h if per_head else 1, nb)
    q, k, v = _qkv(b, h, n, d, dtype, seed)
    with runs_on(backend, OP, phases=("forward", "backward")):
        out = block_sparse_attention(q, k, v, layout, block, backend=backend)
        go = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), go)
    q64, k64, v64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = block_sparse_attention_reference(q64, k64, v64, layout, block)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), go.double())
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.double(), ref, **_tol(dtype))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **_tol(dtype))
    dropped = (dense_mask(layout if layout.ndim == 3 else layout[None], n, n, block).sum(-1) == 0)
    assert dropped.any() and (out.detach()[:, :, :block] == 0).all()  # block row 0 kept nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 70), d=st.sampled_from([1, 5, 8, 9, 16, 24, 72]),
       per_head=st.booleans(), seed=st.integers(0, 1000))
def test_matches_reference(backend, dtype, b, h, n, d, per_head, seed):
    block = 16  # a power of two >= 16: what every backend takes (the Triton kernel's tl.dot tile)
    _check(backend, dtype, b, h, n, d, block, per_head, seed)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float32))
@pytest.mark.parametrize("block", [16, 32])
def test_local_and_strided_layouts(backend, block):
    n, d = 5 * block - 3, 72  # a pruned head width (72) and a short last block
    q, k, v = _qkv(2, 2, n, d, torch.float32, 0)
    for layout in (local_layout(5, 1), strided_layout(5, 2), torch.ones(5, 5, dtype=torch.bool)):
        with runs_on(backend, OP):
            out = block_sparse_attention(q, k, v, layout, block, backend=backend)
        ref = block_sparse_attention_reference(q.double(), k.double(), v.double(), layout, block)
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-4)


def test_full_layout_is_sdpa():
    q, k, v = _qkv(1, 2, 48, 8, torch.float32, 3)
    out = block_sparse_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool), 16)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", backend_params(OP, CPU, torch.float64))
def test_gradcheck_fp64(backend):
    q, k, v = _qkv(1, 2, 20, 3, torch.float64, 1)
    layout = torch.tensor([[True, False], [False, True]])
    layout2 = torch.tensor([[False, False], [True, True]])  # first block row fully dropped
    for lay in (layout, layout2):
        assert torch.autograd.gradcheck(lambda a, b, c: block_sparse_attention(a, b, c, lay, 16, backend=backend),
                                        (q, k, v))


def test_bad_arguments_name_the_argument():
    q, k, v = _qkv(1, 1, 16, 4, torch.float32, 0)
    lay = torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="layout: expected"):
        block_sparse_attention(q, k, v, torch.ones(2, 2, dtype=torch.bool), 16)
    with pytest.raises(ValueError, match="layout: expected a bool"):
        block_sparse_attention(q, k, v, torch.ones(1, 1), 16)
    with pytest.raises(ValueError, match="block_size"):
        block_sparse_attention(q, k, v, lay, 0)
    with pytest.raises(ValueError, match="key, value"):
        block_sparse_attention(q, k[..., :2], v, lay, 16)
    with pytest.raises(ValueError, match="query"):
        block_sparse_attention(q[0], k, v, lay, 16)
    with pytest.raises(ValueError, match="scale"):
        block_sparse_attention(q, k, v, lay, 16, scale=-1.0)


def test_layouts_and_csr():
    assert local_layout(4, 1).sum() == 10 and strided_layout(6, 3)[0].tolist() == [True, False, True, False, False, True]
    crow, col = layout_csr(local_layout(3, 0).unsqueeze(0))
    assert crow.tolist() == [[0, 1, 2, 3]] and col.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        local_layout(0, 1)
