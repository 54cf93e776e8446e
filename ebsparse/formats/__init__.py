"""Sparsity patterns as plain data: masks, CSR/CSC index, 2:4 checks. No compute kernels here."""

from ebsparse.formats.block_layout import local_layout, strided_layout
from ebsparse.formats.index import PatternIndex, build_index
from ebsparse.formats.masks import (
    check_density,
    exact_kept_count,
    magnitude_mask,
    random_mask,
)
from ebsparse.formats.transposable import is_transposable_2_4, transposable_2_4_mask
from ebsparse.formats.twofour import check_2_4_mask, is_2_4_mask

__all__ = [
    "local_layout",
    "strided_layout",
    "PatternIndex",
    "build_index",
    "check_density",
    "exact_kept_count",
    "magnitude_mask",
    "random_mask",
    "check_2_4_mask",
    "is_2_4_mask",
    "transposable_2_4_mask",
    "is_transposable_2_4",
]

from ebsparse.formats.block import (  # noqa: E402
    SUPPORTED_BLOCKS,
    BlockIndex,
    build_block_index,
    check_block,
    check_block_mask,
    is_block_mask,
    magnitude_block_mask,
    random_block_mask,
)

__all__ += ["SUPPORTED_BLOCKS", "BlockIndex", "build_block_index", "check_block", "check_block_mask",
            "is_block_mask", "magnitude_block_mask", "random_block_mask"]
