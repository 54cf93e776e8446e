"""Backend registry: ops name a backend by string; backends register themselves here.

A backend is the code that executes a sparsity pattern; it declares what it supports by answering
`unavailable_reasons(...)` (empty list = usable), in the spirit of xformers' dispatch. Automatic
choice among usable backends lives in `ebsparse.backends` and is installed here as the selector,
so ops never import backend code.
"""

from __future__ import annotations

from typing import Callable

import torch

Index = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # row_ptr, col_idx, col_ptr, row_idx


class Backend:
    """Base class of a backend. Subclasses implement the kernels of the ops they support.

    Linear: input (N, K), weight and mask (M, K). Conv: input (N, Ci, H, W), weight and mask
    (Co, Ci, KH, KW). `index` is the CSR/CSC of the mask's (M, K) view (see ebsparse.formats).
    Grad-weight returns a dense-shaped tensor that is zero off the pattern.
    """

    name: str = ""
    ops: frozenset[str] = frozenset()

    def unavailable_reasons(self, op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
        reasons = []
        if op not in self.ops:
            reasons.append(f"{self.name} has no {op} kernel")
        return reasons

    # linear
    def linear_forward(self, input, weight, bias, mask, index: Index):
        raise NotImplementedError

    def linear_grad_input(self, grad_output, weight, mask, index: Index):
        raise NotImplementedError

    def linear_grad_weight(self, grad_output, input, mask, index: Index):
        raise NotImplementedError

    def linear_backward(self, grad_output, input, weight, mask, index: Index):
        """(grad-input, grad-weight) of one step; backends that can share work between the two
        (the native CPU kernels transpose grad_output once for both) override this."""
        return (self.linear_grad_input(grad_output, weight, mask, index),
                self.linear_grad_weight(grad_output, input, mask, index))

    # conv2d
    def conv2d_forward(self, input, weight, bias, mask, index: Index, stride, padding, dilation):
        raise NotImplementedError

    def conv2d_grad_input(self, grad_output, weight, mask, index: Index, input_size, stride, padding, dilation):
        raise NotImplementedError

    def conv2d_grad_weight(self, grad_output, input, mask, index: Index, weight_size, stride, padding, dilation):
        raise NotImplementedError


_BACKENDS: dict[str, Backend] = {}
_selector: Callable[..., str] | None = None
_usable: set[tuple] = set()  # (backend, op, device, dtype) already checked by resolve_backend


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    _usable.clear()
    return backend


def registered_backends() -> dict[str, Backend]:
    return dict(_BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend: expected one of {sorted(_BACKENDS) + ['auto']}, got {name!r}") from None


def set_selector(selector: Callable[..., str]) -> None:
    global _selector
    _selector = selector


def resolve_backend(requested: str | None, op: str, device: torch.device, dtype: torch.dtype,
                    measure: Callable[[str], float] | None, key: tuple) -> str:
    """The backend to run: an explicit request (raising with reasons if it cannot run) or the
    selector's automatic choice."""
    import os

    requested = requested or os.environ.get("EBSPARSE_BACKEND") or "auto"
    if requested != "auto":
        checked = (requested, op, torch.device(device), dtype)
        if checked not in _usable:  # what a backend supports does not change while it runs
            reasons = get_backend(requested).unavailable_reasons(op, device, dtype)
            if reasons:
                raise RuntimeError(f"backend {requested!r} cannot run {op} on {device}/{dtype}: " + "; ".join(reasons))
            _usable.add(checked)
        return requested
    if _selector is None:
        return "dense"
    return _selector(op, device, dtype, measure, key)
