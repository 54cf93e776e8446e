"""ebsparse: sparse training of diffusion models that is faster in wall-clock time, not just on paper.

Importing ebsparse registers the ops and backends; it never fails because the compiled extension
is missing (`ebsparse.backends.report()` then says why the native backend is unavailable).
"""

__version__ = "0.1.0"

from ebsparse import backends, formats, ops  # noqa: E402  (registers ops and backends)
from ebsparse.nn import SparseConv2d, SparseLinear, densify, sparsify  # noqa: E402

__all__ = ["backends", "formats", "ops", "SparseLinear", "SparseConv2d", "sparsify", "densify", "__version__"]
