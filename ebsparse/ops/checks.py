"""Argument checks run before any kernel: each error names the argument and what was expected."""

from __future__ import annotations

import operator

import torch

from ebsparse.formats.index import PatternIndex, build_index


def check_tensor(t, name: str, *, dims: int | None = None, floating: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dims, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def check_like(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (that of {ref_name}), got {t.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {t.dtype}")


def check_mask(mask, weight: torch.Tensor) -> None:
    check_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(f"mask: expected shape {tuple(weight.shape)} (that of weight), got {tuple(mask.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"mask: expected device {weight.device} (that of weight), got {mask.device}")


def check_bias(bias, weight: torch.Tensor) -> None:
    if bias is None:
        return
    check_tensor(bias, "bias", dims=1, floating=True)
    check_like(bias, weight, "bias", "weight")
    if bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    # operator.index, not int(): a float such as 1.9 is refused, not truncated to 1.
    try:
        a = b = operator.index(value)
    except TypeError:
        try:
            a, b = (operator.index(v) for v in value)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {value!r}")
    return a, b


def checked_pattern(index, mask: torch.Tensor) -> PatternIndex:
    """The pattern index to run: `index` when it describes `mask` (free for the index the mask's
    own module built; any other is compared with the mask once), a new one when `index` is None."""
    if index is None:
        return build_index(mask)
    if not isinstance(index, PatternIndex):
        raise TypeError(f"index: expected a PatternIndex (ebsparse.formats.build_index(mask)) or None, "
                        f"got {type(index).__name__}")
    if not index.describes(mask):
        raise ValueError("index: does not describe `mask` (built from another mask, or before the mask "
                         "changed); rebuild it with ebsparse.formats.build_index(mask)")
    return index


def check_once_differentiable(op: str, *tensors: torch.Tensor) -> None:
    """Raise in a backward asked to build a graph of itself (create_graph=True): the kernels'
    gradients are not differentiable again, and a second-order gradient would come back wrong."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op}: differentiable once only; the gradient of its gradient (create_graph=True "
                           "through a sparse layer, e.g. a gradient penalty) is not supported")
