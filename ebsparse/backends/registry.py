"""The registered backends, by name, and an optional trace of which backend ran each kernel."""

from __future__ import annotations

import contextlib

from ebsparse.backends.base import Backend

_BACKENDS: dict[str, Backend] = {}
# (op, phase, backend name) of every kernel call while `trace()` is active; None otherwise.
executed: list[tuple[str, str, str]] | None = None


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def registered_backends() -> dict[str, Backend]:
    return dict(_BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"backend: expected one of {sorted(_BACKENDS) + ['auto']}, got {name!r}") from None


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
