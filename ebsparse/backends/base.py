"""`Backend`: the base class every backend derives from, and the registry of backend instances.

A backend declares the ops it has kernels for and answers `unavailable_reasons(op, device, dtype)`
(an empty list when it can run), in the spirit of xformers' `not_supported_reasons`. Its kernels
take the op's inputs object (`ebsparse.ops.inputs`: tensors, geometry and the pattern by field
name) and never check arguments: the public op did that before dispatch.
"""

from __future__ import annotations

import torch


def conv2d_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis (as `torch.nn.Conv2d` documents it); the one
    copy of the formula, used by the conv op's checks and fake kernel and by the kernels."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class Backend:
    """Kernels of the ops a backend supports (`ops`), by op name:

    - ``linear_forward(inputs) -> out`` and ``linear_backward(inputs, grad_output, input_grad,
      weight_grad) -> (grad_input | None, grad_weight | None)``; likewise ``conv2d_*``. The weight
      gradient is dense-shaped and exactly zero off the pattern; dropped weights contribute exactly
      zero to the output, whatever they hold.
    - ``prune_2_4(rows)``, ``compress_2_4(rows, mask_rows)``, ``decompress_2_4(values, meta)`` on
      (rows, K) matrices whose consecutive entries form the 2:4 groups.
    """

    name: str = ""
    ops: frozenset[str] = frozenset()

    def unavailable_reasons(self, op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
        """Why this backend cannot run `op` on `device` for `dtype`; empty when it can."""
        if op not in self.ops:
            return [f"{self.name} has no {op} kernel"]
        return []

    def __reduce__(self):
        # One instance per name: copies and unpickled modules refer to the registered backend.
        return get_backend, (self.name,)


_BACKENDS: dict[str, Backend] = {}


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
