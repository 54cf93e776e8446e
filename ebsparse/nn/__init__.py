"""Drop-in sparse modules and the one-call converter."""

from ebsparse.nn.conv import SparseConv2d
from ebsparse.nn.linear import SparseLinear
from ebsparse.nn.sparsify import SparsifyReport, densify, sparsify

__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "densify", "SparsifyReport"]
