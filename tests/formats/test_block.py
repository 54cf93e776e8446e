"""Block patterns (ebsparse.formats.block): exact block counts, selection by block norm, every conv
tap alike, the BSR index and its checks, clear errors for unsupported shapes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.formats.block import (SUPPORTED_BLOCKS, block_norms, blocks_of, build_block_index, check_block,
                                    check_block_mask, expand_blocks, is_block_mask, magnitude_block_mask,
                                    random_block_mask)


@settings(max_examples=40, deadline=None)
@given(block=st.sampled_from(SUPPORTED_BLOCKS), rb=st.integers(1, 5), cb=st.integers(1, 5),
       taps=st.sampled_from([(), (1, 1), (3, 3), (1, 3)]), density=st.floats(0, 1), seed=st.integers(0, 999))
def test_exact_block_counts_and_whole_blocks(block, rb, cb, taps, density, seed):
    shape = (rb * block[0], cb * block[1]) + taps
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    for mask in (magnitude_block_mask(w, density, block),
                 random_block_mask(shape, density, block, generator=torch.Generator().manual_seed(seed))):
        assert mask.shape == w.shape and mask.dtype == torch.bool
        assert is_block_mask(mask, block)
        kept = blocks_of(mask, block)
        assert int(kept.sum()) == (max(1, round(density * rb * cb)) if density > 0 else 0)
        assert torch.equal(expand_blocks(kept, shape, block), mask)


def test_magnitude_keeps_the_largest_block_norms():
    w = torch.randn(32, 32, 3, 3)
    w[16:, :16] *= 100  # the one block with by far the largest norm
    mask = magnitude_block_mask(w, 0.25, (16, 16))
    assert torch.equal(blocks_of(mask, (16, 16)), torch.tensor([[False, False], [True, False]]))
    norms = block_norms(w, (8, 8))
    mask = magnitude_block_mask(w, 0.5, (8, 8))
    kept = blocks_of(mask, (8, 8))
    assert norms[kept].min() >= norms[~kept].max()


def test_index_is_the_block_csr_and_csc():
    grid = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    mask = expand_blocks(grid, (12, 12, 3, 3), (4, 4))
    index = build_block_index(mask, (4, 4))
    assert index.brow_ptr.tolist() == [0, 2, 2, 4] and index.bcol_idx.tolist() == [0, 2, 0, 1]
    assert index.bcol_ptr.tolist() == [0, 2, 3, 4] and index.brow_idx.tolist() == [0, 2, 2, 0]
    assert index.nnz == int(mask.sum()) and index.density == pytest.approx(4 / 9)
    assert index.describes(mask) and index.describes(mask.clone())
    other = mask.clone()
    other[:4, :4] = False
    assert not index.describes(other)


def test_partial_blocks_and_unsupported_shapes_raise():
    mask = torch.ones(16, 16, 3, 3, dtype=torch.bool)
    mask[0, 0, 1, 1] = False  # one tap of one block
    with pytest.raises(ValueError, match=r"block \(0, 0\) keeps 2303 of 2304"):
        check_block_mask(mask, (16, 16))
    with pytest.raises(ValueError, match="not supported; expected one of"):
        check_block((3, 3))
    with pytest.raises(TypeError, match="block: expected a pair"):
        check_block(16)
    for truncated in ((16.9, 16), ("8", "8")):  # were read as (16, 16) and (8, 8)
        with pytest.raises(TypeError, match="block: expected a pair"):
            check_block(truncated)
    with pytest.raises(ValueError, match=r"not multiples of the block \(16, 16\)"):
        magnitude_block_mask(torch.randn(24, 16), 0.5, (16, 16))
