"""Loads the compiled extension `ebsparse._C` (the native kernels) once; importing ebsparse never
fails without it."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def extension_error() -> str | None:
    """None when `ebsparse._C` imported (registering the native ops), else why it did not."""
    try:
        import ebsparse._C  # noqa: F401
    except ImportError as exc:  # not built, or built against another torch
        return f"extension ebsparse._C not importable ({exc}); build it with `pip install --no-build-isolation .`"
    return None


def has_cuda_kernels() -> bool:
    import torch

    return extension_error() is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "ebsparse::csr_linear", "CUDA")
