"""Keep freed host memory in the process, so that a training step does not map its activations anew.

A CPU training step allocates and frees the same activations every step. glibc's malloc hands large
freed blocks back to the kernel (chunks above its mmap threshold are unmapped; a free heap top above
its trim threshold is trimmed), so the next step maps them again and pays a page fault and the
kernel's zeroing for every 4 KiB page. Raising both thresholds keeps those blocks in the heap, where
the next step reuses them; resident memory then stays at the step's peak, which training reaches
on every step anyway. Measurements: bench/NOTES.md ("Page faults of the training iteration").
"""

from __future__ import annotations

import ctypes
import os
import platform

#: Blocks up to this size come from the heap: glibc's ceiling for the mmap threshold on 64-bit
#: (4 MiB x sizeof(long)); mallopt refuses more. Larger blocks are still mapped per allocation.
MMAP_THRESHOLD = 32 << 20
#: The heap is trimmed only when this much of its top is free.
TRIM_THRESHOLD = 1 << 30
# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: ``EBSPARSE_KEEP_FREED_MEMORY=0`` leaves the C library's policy as it is.
ENV = "EBSPARSE_KEEP_FREED_MEMORY"


def glibc_mallopt():
    """glibc's ``mallopt(param, value)`` (ints in, 1 on success), or None with another C library or
    operating system."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """Sets glibc's mmap threshold to :data:`MMAP_THRESHOLD` and its trim threshold to
    :data:`TRIM_THRESHOLD` for the whole process (what ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``
    would set at start-up). Returns True when glibc took both; False, changing nothing, with another
    C library or operating system, or when ``EBSPARSE_KEEP_FREED_MEMORY=0``."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
