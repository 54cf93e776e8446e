"""2:4 prune / compress / decompress: native kernels against the pure-PyTorch reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.formats import is_2_4_mask
from ebsparse.ops import compress_2_4, decompress_2_4, prune_2_4, prune_2_4_reference, sparse_conv2d, sparse_linear
from ebsparse.ops import sparse_conv2d_reference, sparse_linear_reference
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")


@given(m=st.integers(1, 20), groups=st.integers(1, 12), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_prune_linear_matches_reference(m, groups, seed, dtype):
    w = torch.randn(m, 4 * groups, generator=torch.Generator().manual_seed(seed)).to(dtype)
    mask = prune_2_4(w)
    assert torch.equal(mask, prune_2_4_reference(w))
    assert is_2_4_mask(mask)
    # the kept two are the largest in each group
    kept = (w.abs() * mask).reshape(m, groups, 4).sum(-1)
    top2 = w.abs().reshape(m, groups, 4).float().topk(2, -1).values.sum(-1)
    torch.testing.assert_close(kept.float(), top2, rtol=1e-2, atol=1e-2)


def test_prune_conv_groups_run_along_input_channels():
    w = torch.randn(6, 8, 3, 3)
    mask = prune_2_4(w)
    assert torch.equal(mask, prune_2_4_reference(w))
    per_group = mask.permute(0, 2, 3, 1).reshape(6, 3, 3, 2, 4).sum(-1)
    assert bool((per_group == 2).all())


def test_prune_ties_keep_lower_index():
    w = torch.ones(2, 8)
    assert torch.equal(prune_2_4(w)[0, :4], torch.tensor([True, True, False, False]))


@given(m=st.integers(1, 16), groups=st.integers(1, 10), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_compress_round_trip(m, groups, seed, dtype):
    w = torch.randn(m, 4 * groups, generator=torch.Generator().manual_seed(seed)).to(dtype)
    mask = prune_2_4(w)
    values, meta = compress_2_4(w, mask)
    assert values.shape == (m, 2 * groups) and meta.shape == (m, groups) and meta.dtype == torch.uint8
    assert torch.equal(decompress_2_4(values, meta), w * mask)


def test_compress_conv_round_trip():
    w = torch.randn(5, 12, 3, 3, dtype=torch.float64)
    mask = prune_2_4(w)
    values, meta = compress_2_4(w, mask)
    assert values.shape == (5 * 9, 6)
    assert torch.equal(decompress_2_4(values, meta, w.shape), w * mask)


@pytest.mark.parametrize("backend", backend_params("prune_2_4", CPU, torch.float32))
def test_prune_on_every_backend(backend):
    w = torch.randn(6, 16)
    with runs_on(backend, "prune_2_4", ("2:4",)):
        mask = prune_2_4(w, backend=backend)
    assert torch.equal(mask, prune_2_4_reference(w))


@pytest.mark.parametrize("backend", backend_params("compress_2_4", CPU, torch.float32))
@pytest.mark.parametrize("shape", [(7, 16), (3, 8, 3, 3)])
def test_compress_and_decompress_on_every_backend(backend, shape):
    """Each backend's 2:4 kernels, reached through the library, agree with the dense backend's."""
    w = torch.randn(*shape)
    mask = prune_2_4_reference(w)
    with runs_on(backend, "compress_2_4", ("2:4",)):
        values, meta = compress_2_4(w, mask, backend=backend)
    expected = compress_2_4(w, mask, backend="dense")
    assert torch.equal(values, expected[0]) and torch.equal(meta, expected[1])
    with runs_on(backend, "decompress_2_4", ("2:4",)):
        dense = decompress_2_4(values, meta, w.shape, backend=backend)
    assert torch.equal(dense, w * mask)


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
def test_2_4_matmul_and_conv(backend):
    x, w = torch.randn(9, 16, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    mask = prune_2_4(w)
    with runs_on(backend, "linear"):
        out = sparse_linear(x, w, None, mask, backend=backend)
    torch.testing.assert_close(out, sparse_linear_reference(x, w, None, mask))
    xc, wc = torch.randn(2, 8, 7, 7, dtype=torch.float64), torch.randn(4, 8, 3, 3, dtype=torch.float64)
    mc = prune_2_4(wc)
    with runs_on(backend, "conv2d"):
        out = sparse_conv2d(xc, wc, None, mc, 1, 1, backend=backend)
    torch.testing.assert_close(out, sparse_conv2d_reference(xc, wc, None, mc, 1, 1))


def test_bad_2_4_inputs():
    with pytest.raises(ValueError, match="in_features % 4 == 0"):
        prune_2_4(torch.randn(3, 6))
    with pytest.raises(ValueError, match="in_channels % 4 == 0"):
        prune_2_4(torch.randn(3, 6, 3, 3))
    with pytest.raises(ValueError, match="not a 2:4 pattern"):
        compress_2_4(torch.randn(2, 8), torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="meta"):
        decompress_2_4(torch.randn(2, 4), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises((ValueError, RuntimeError), match="meta"):
        decompress_2_4(torch.randn(1, 2), torch.tensor([[0b0101]], dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run prune_2_4"):
        prune_2_4(torch.randn(2, 8), backend="triton")
