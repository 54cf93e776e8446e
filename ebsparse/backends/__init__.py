"""Backends that execute sparse ops: dense (fallback), native (C++/CUDA), triton.

Importing this package registers them and installs the automatic selector; `report()` says what
runs here and why not.
"""

from ebsparse.backends.dense import DenseBackend
from ebsparse.backends.native import NativeBackend
from ebsparse.backends.report import availability, report
from ebsparse.backends.select import auto_candidates, choices, choose, clear
from ebsparse.backends.triton_backend import TritonBackend
from ebsparse.ops.registry import register_backend, registered_backends, set_selector

register_backend(DenseBackend())
register_backend(NativeBackend())
register_backend(TritonBackend())
set_selector(choose)

__all__ = ["report", "availability", "auto_candidates", "choices", "clear", "registered_backends"]
