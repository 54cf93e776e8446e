"""How an op's forward and backward reach a backend's kernels, for every op alike: the backend's
`<op>_forward` / `<op>_backward` methods on the op's inputs object (`inputs.op` names the op), each
call recorded for `ebsparse.backends.trace()`."""

from __future__ import annotations

import torch

from ebsparse.backends import registry
from ebsparse.backends.base import Backend


def forward(backend: Backend, inputs) -> torch.Tensor:
    if registry.executed is not None:
        registry.executed.append((inputs.op, "forward", backend.name))
    return getattr(backend, f"{inputs.op}_forward")(inputs)


def gradients(backend: Backend, inputs, grad_output: torch.Tensor, input_grad: bool, weight_grad: bool):
    """(grad-input, grad-weight); the full weight gradient (`dense_weight_grad`) comes from the dense
    backend."""
    if registry.executed is not None:
        registry.executed.append((inputs.op, "backward", backend.name))
    backward = f"{inputs.op}_backward"
    if inputs.dense_weight_grad and weight_grad and backend.name != "dense":
        grad_input = getattr(backend, backward)(inputs, grad_output, True, False)[0] if input_grad else None
        return grad_input, getattr(registry.get_backend("dense"), backward)(inputs, grad_output, False, True)[1]
    return getattr(backend, backward)(inputs, grad_output, input_grad, weight_grad)


def bias_gradient(inputs, grad_output: torch.Tensor) -> torch.Tensor:
    """The bias gradient of a linear or conv op: the one its backend's backward made with the weight
    gradient (left in `inputs.state`), else grad_output summed over every dim but the channels' (1)."""
    made = inputs.state.pop("grad_bias", None)
    if made is not None:
        return made
    return grad_output.sum([d for d in range(grad_output.dim()) if d != 1])
