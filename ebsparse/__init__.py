"""ebsparse: sparse training of diffusion models that is faster in wall-clock time, not just on paper.

Importing ebsparse registers the ops and backends; it never fails because the compiled extension
is missing (`ebsparse.backends.report()` then says why the native backend is unavailable).
The heavier subpackages (``ebsparse.s2s``, ``ebsparse.diffusion``, ...) are imported on first
attribute access, so ``import ebsparse; ebsparse.s2s.RigL(...)`` works and ``import ebsparse``
stays light.
"""

import importlib as _importlib

__version__ = "0.1.0"

from ebsparse import backends, formats, ops  # noqa: E402  (registers ops and backends)
from ebsparse.nn import SparseConv2d, SparseLinear, densify, sparsify  # noqa: E402

__all__ = ["backends", "formats", "ops", "SparseLinear", "SparseConv2d", "sparsify", "densify", "__version__"]

#: Subpackages loaded on first access as ``ebsparse.<name>``.
_LAZY_SUBPACKAGES = frozenset({"data", "diffusion", "earlybird", "metrics", "models", "pruning", "s2s", "triton"})


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBPACKAGES)
