"""Drop-in sparse modules and the one-call converter."""

from ebsparse.nn.attention import BlockSparseAttnProcessor, use_block_sparse_attention
from ebsparse.nn.conv import SparseConv2d
from ebsparse.nn.gru import SparseGRU
from ebsparse.nn.linear import SparseLinear
from ebsparse.nn.sparsify import SparsifyReport, densify, sparsify

__all__ = ["SparseLinear", "SparseConv2d", "SparseGRU", "sparsify", "densify", "SparsifyReport", "BlockSparseAttnProcessor",
           "use_block_sparse_attention"]
