"""Example inputs of one forward call, as pruning traces and checks a model with them.

Either positional (a tuple or list: ``model(*inputs)``, e.g. ``(x, t)`` for the U-Nets of
:mod:`ebsparse.models`) or keyword (a mapping of argument names: ``model(**inputs)``, e.g.
``{"sample": x, "timestep": t, "class_labels": y}`` for diffusers' models). Anything else is
rejected before any tracing, with an error naming ``example_inputs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from .errors import PruningError

__all__ = ["ExampleInputs", "check_inputs", "call_with"]

ExampleInputs = Union[Sequence[Any], Mapping[str, Any]]


def check_inputs(example_inputs: Any) -> tuple[Any, ...] | dict[str, Any]:
    """``example_inputs`` as a tuple (positional) or a dict (keyword); a single tensor is one
    positional input. Raises :class:`PruningError` for any other type or a non-string key."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Mapping):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise PruningError(f"example_inputs: keyword inputs need argument names (str) as keys, got {bad!r}")
        return dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise PruningError(f"example_inputs: expected a tuple of positional inputs or a mapping of keyword inputs "
                       f"(e.g. {{'sample': x, 'timestep': t}}), got {type(example_inputs).__name__}")


def call_with(model: nn.Module, example_inputs: Any) -> Any:
    """``model(**inputs)`` for keyword inputs, ``model(*inputs)`` for positional ones."""
    inputs = check_inputs(example_inputs)
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)
