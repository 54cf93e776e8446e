"""One check shared by the model configs: a mapping becomes dataclass fields, and a key the
dataclass does not have is an error that names it (a typo must not silently change a model)."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["checked_fields"]


def checked_fields(cls: type, d: Mapping[str, Any], also: str = "") -> dict[str, Any]:
    """``dict(d)`` after checking every key is a field of the dataclass ``cls``; ``also`` names
    extra accepted keys in the message."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected a subset of {sorted(known)}{also}")
    return dict(d)
