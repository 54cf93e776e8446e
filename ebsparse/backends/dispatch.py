"""The one dispatch point: which backend runs an op call, resolved once per call.

An explicit name (argument or `EBSPARSE_BACKEND`) runs that backend or raises with its reasons,
never falling back. "auto" asks `select.choose`, which times each usable backend's kernels on these
inputs once per shape key (`timing.time_step`). The 2:4 ops are cheap next to training and are not
timed: auto takes the first usable backend with kernels, dense last.
"""

from __future__ import annotations

import os

import torch

from ebsparse.backends import select
from ebsparse.backends.base import Backend
from ebsparse.backends.registry import get_backend, registered_backends
from ebsparse.backends.timing import time_step

_usable: set[tuple] = set()  # (backend, op, device, dtype) already checked


def _requested(backend: str | None) -> str:
    return backend or os.environ.get("EBSPARSE_BACKEND") or "auto"


def _explicit(name: str, op: str, device: torch.device, dtype: torch.dtype) -> Backend:
    backend = get_backend(name)
    checked = (name, op, device, dtype)
    if checked not in _usable:  # what a backend supports does not change while it runs
        reasons = backend.unavailable_reasons(op, device, dtype)
        if reasons:
            raise RuntimeError(f"backend {name!r} cannot run {op} on {device}/{dtype}: " + "; ".join(reasons))
        _usable.add(checked)
    return backend


def requests_auto(backend: str | None) -> bool:
    """Whether `backend` (the argument, else `EBSPARSE_BACKEND`) leaves the choice to auto."""
    return _requested(backend) == "auto"


def resolve(backend: str | None, inputs) -> Backend:
    """The backend that runs an op call with these inputs (an `ebsparse.ops.inputs` object)."""
    name = _requested(backend)
    if name != "auto":
        return _explicit(name, inputs.op, inputs.device, inputs.dtype)
    backends = registered_backends()
    choice = select.choose(inputs.op, inputs.device, inputs.dtype,
                           lambda candidate: time_step(backends[candidate], inputs), inputs.tuning_key())
    return backends[choice]


def resolve_untimed(backend: str | None, op: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend of an op that is not timed (2:4 prune/compress/decompress)."""
    name = _requested(backend)
    if name != "auto":
        return _explicit(name, op, device, dtype)
    if torch.compiler.is_compiling():
        return get_backend("dense")
    candidates = select.auto_candidates(op, device, dtype)
    return get_backend(next((c for c in candidates if c != "dense"), "dense"))
