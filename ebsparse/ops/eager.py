"""Eager entry points for the ops' autograd.

Every op is a `torch.library` custom op, so that `torch.compile` traces it as one opaque node with a
fake kernel. Calling a custom op from Python in eager mode, though, costs ~0.2 ms per forward and
again per backward (argument normalisation, redispatch through the autograd and backend keys),
which is more than a whole sparse layer takes at small batch sizes. So eager calls go through a
plain `torch.autograd.Function` built from the *same* implementation, context setup and gradient
routine as the custom op: one definition of the math, two ways in.
"""

from __future__ import annotations

from typing import Callable

import torch


def eager_function(name: str, forward: Callable, setup_context: Callable,
                   backward: Callable) -> type[torch.autograd.Function]:
    """An autograd.Function running ``forward(*inputs)``, saving what ``setup_context(ctx, inputs,
    output)`` saves, and returning ``backward(ctx, grad_output)`` (one gradient per input)."""

    def function_forward(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {
        "__doc__": f"Eager-mode autograd of {name} (see ebsparse.ops.eager).",
        "forward": staticmethod(function_forward),
        "backward": staticmethod(backward),
    })
