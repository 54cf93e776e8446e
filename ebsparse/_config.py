"""The one rule every config dataclass follows when it is read from a mapping (a YAML section).

A key the dataclass does not have is an error (a typo must not silently change a paper setting), and
so is a value of the wrong type; both errors name the full dotted key and what was expected, e.g.
``training.lr: expected a number, got 'fast'``. Range checks stay with each dataclass
(``__post_init__``); their errors are prefixed with the section key when they do not name it.

This module imports nothing from ebsparse, so every layer can use it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Mapping

__all__ = ["config_from_dict"]

_SEQUENCES = (tuple, list, collections.abc.Sequence)
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe(tp: Any) -> str | None:
    """What a value of annotation ``tp`` must be, in words; None when the rule does not check ``tp``."""
    if isinstance(tp, dataclasses.InitVar):
        return _describe(tp.type)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _NAMES:
        return _NAMES[tp]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and _describe(inner[0]) is not None:
            return _describe(inner[0]) + (" or null" if len(inner) < len(args) else "")
        return None
    if origin in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(set(args)) == 1 and args[0] in _PLURALS:
                return f"a list of {len(args)} {_PLURALS[args[0]]}"
            return None
        elem = args[0] if args else Any
        if elem is Any:
            return "a list"
        return f"a list of {_PLURALS[elem]}" if elem in _PLURALS else None
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    return None


def _fits(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether ``value`` is a ``tp``, the value to store): ints pass as floats, and so do strings
    that read as numbers (YAML 1.1 reads ``1e-3`` as a string)."""
    if isinstance(tp, dataclasses.InitVar):
        return _fits(value, tp.type)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, value
        for a in args:
            if a is not type(None):
                ok, v = _fits(value, a)
                if ok:
                    return True, v
        return False, value
    if origin in _SEQUENCES:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False, value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False, value
            elems = args
        else:
            elems = [args[0] if args else Any] * len(value)
        out = []
        for v, a in zip(value, elems):
            ok, v = _fits(v, a) if _describe(a) is not None else (True, v)
            if not ok:
                return False, value
            out.append(v)
        return True, (tuple(out) if origin is tuple else out)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping), value
    return True, value


def config_from_dict(cls: type, data: Any, key: str, *, error: type[Exception] = ValueError,
                     extra_keys: tuple[str, ...] = ()) -> Any:
    """Build the dataclass ``cls`` from the mapping ``data`` read at ``key`` (a dotted config path).

    Raises ``error`` (a ``ValueError`` subclass) when ``data`` is not a mapping, holds a key that is
    not a field, holds a value of the wrong type (``"{key}.{field}: expected ..., got ..."``), or
    when ``cls`` itself rejects a value. ``extra_keys``: keys the caller consumed before the call,
    listed as accepted in the unknown-key message.
    """
    if not isinstance(data, Mapping):
        raise error(f"{key}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in cls.__dataclass_fields__.values() if f.init}  # InitVars included
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise error(f"{key}: unknown keys {unknown}; expected a subset of {sorted([*fields, *extra_keys])}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        tp = hints.get(name, Any)
        expected = _describe(tp)
        if expected is not None:
            ok, value = _fits(value, tp)
            if not ok:
                raise error(f"{key}.{name}: expected {expected}, got {value!r}")
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        text = str(e)
        if text.startswith((f"{key}.", f"{key}:", f"{key} ")):
            raise error(text) from e
        raise error(f"{key}: {text}") from e
