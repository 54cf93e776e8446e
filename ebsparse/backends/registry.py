"""The registered backends, by name (kept in `ebsparse.backends.base`), and an optional trace of
which backend ran each kernel."""

from __future__ import annotations

import contextlib

from ebsparse.backends.base import get_backend, register_backend, registered_backends

__all__ = ["get_backend", "register_backend", "registered_backends", "trace", "executed"]

# (op, phase, backend name) of every kernel call while `trace()` is active; None otherwise.
executed: list[tuple[str, str, str]] | None = None


@contextlib.contextmanager
def trace():
    """Record which backend ran each op phase inside the block: yields a list of
    (op, "forward" | "backward" | "2:4", backend name), e.g. for tests that claim a kernel ran."""
    global executed
    outer, executed = executed, []
    calls = executed
    try:
        yield calls
    finally:
        executed = outer
        if outer is not None:  # an enclosing trace sees the calls too
            outer.extend(calls)
