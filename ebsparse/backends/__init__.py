"""Backends that execute sparse ops: dense (fallback), native (C++/CUDA), triton, semi_structured (2:4
on sparse tensor cores).

Importing this package registers them; `dispatch.resolve` picks the one that runs an op call,
`report()` says what runs here and why not, and `trace()` records which backend ran each kernel.
"""

from ebsparse.backends.base import Backend
from ebsparse.backends.dense import DenseBackend
from ebsparse.backends.extension import extension_error
from ebsparse.backends.native import NativeBackend
from ebsparse.backends.registry import get_backend, register_backend, registered_backends, trace
from ebsparse.backends.report import availability, report
from ebsparse.backends.select import auto_candidates, choices, choose, clear, recorded, restore
from ebsparse.backends.semi_structured import SemiStructuredBackend
from ebsparse.backends.triton_backend import TritonBackend

register_backend(DenseBackend())
register_backend(NativeBackend())
register_backend(TritonBackend())
register_backend(SemiStructuredBackend())

# Load the native kernels now where they are built (never an error here), so that `torch.ops.ebsparse`
# holds them for direct callers (e.g. `torch.ops.ebsparse.cpu_capability()`) after `import ebsparse`.
extension_error()

__all__ = ["Backend", "report", "availability", "auto_candidates", "choices", "choose", "clear", "get_backend",
           "recorded", "register_backend", "registered_backends", "restore", "trace"]
