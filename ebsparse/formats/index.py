"""The pattern index of a weight mask: the layouts sparse kernels read (CSR, CSC, a dense bit mask).

The weight is viewed as a matrix (M, K): (out_features, in_features) for linear layers and
(out_channels, in_channels * kh * kw) for convolutions. Kernels read the dense-shaped weight in
place at the listed positions, so the index changes only when the mask does (every ΔT steps under
RigL, never under static sparsity) and is built once per mask version, not per step.

An index remembers the mask tensor and version it was built from, so an op handed an index can
tell cheaply that it describes the mask it was given (`describes`), and checks one from elsewhere
against the mask's contents once.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch

# Integer dtype of the same width as each floating dtype: a kept position is all ones, a dropped one
# zero, so `weight & bits` zeroes dropped weights exactly, whatever they hold (NaN and inf included).
_BITS_DTYPE = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
               torch.bfloat16: torch.int16}


def tensor_version(t: torch.Tensor) -> int | None:
    """`t`'s version counter, or None for an inference tensor: it has none, and inference mode may
    still modify it in place, so nothing built from one can be trusted by its version."""
    return None if t.is_inference() else t._version


def described_before(index, mask: torch.Tensor, version: int | None) -> bool:
    """The free answers of an index's `describes`: `mask` is the one (and version) it was built from,
    or the last other mask found to match, unchanged since. Never for an inference mask (`version`
    None)."""
    if version is None:
        return False
    if mask is index.mask and version == index.mask_version:
        return True
    last = index._checked
    return last is not None and last.ref is not None and last.ref() is mask and version == last.version


def remember_described(index, mask: torch.Tensor, version: int | None) -> None:
    """Note that `index` describes `mask` at `version` (an inference mask is not remembered)."""
    if version is None:
        return
    last = index._checked
    if last is None:
        last = _LastChecked()
        object.__setattr__(index, "_checked", last)  # the index dataclasses are frozen
    last.ref, last.version = weakref.ref(mask), version


class _LastChecked:
    """The last foreign mask (weakly) and its version an index was found to describe; copies and
    pickles start empty."""

    __slots__ = ("ref", "version")

    def __init__(self):
        self.ref, self.version = None, -1

    def __reduce__(self):
        return _LastChecked, ()


@dataclass(frozen=True)
class PatternIndex:
    """CSR (row_ptr, col_idx) and CSC (col_ptr, row_idx) of a mask viewed as (rows, cols), all int32."""

    rows: int
    cols: int
    row_ptr: torch.Tensor  # (rows + 1,)
    col_idx: torch.Tensor  # (nnz,), sorted within each row
    col_ptr: torch.Tensor  # (cols + 1,)
    row_idx: torch.Tensor  # (nnz,), sorted within each column
    mask: torch.Tensor | None = field(default=None, repr=False, compare=False)  # the mask it was built from
    mask_version: int | None = field(default=None, repr=False, compare=False)  # None: not to be trusted
    _bits: dict = field(default_factory=dict, repr=False, compare=False)
    # Made on the first foreign mask checked: an index built inside a compiled graph (where Dynamo
    # cannot construct a user class) then holds only tensors and plain values.
    _checked: _LastChecked | None = field(default=None, repr=False, compare=False)

    @property
    def nnz(self) -> int:
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.rows * self.cols)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.row_ptr, self.col_idx, self.col_ptr, self.row_idx

    def describes(self, mask: torch.Tensor) -> bool:
        """Whether this index is the pattern of `mask` now. Free for the mask (and version) it was
        built from; another mask is compared by content, once while it stays the last one checked
        and unchanged."""
        version = tensor_version(mask)
        if described_before(self, mask, version):
            return True
        if mask.dim() < 2 or mask.shape[0] != self.rows or math.prod(mask.shape[1:]) != self.cols:
            return False
        built = build_index(mask)
        # All four: the backward reads the CSC, so an index whose CSC is another mask's would give
        # a right output and a wrong input gradient.
        same = self.row_ptr.device == mask.device and all(
            torch.equal(a, b) for a, b in zip(built.tensors(), self.tensors()))
        if same:
            remember_described(self, mask, version)
        return same

    def bits(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`mask` as integers the width of `dtype`: all ones where kept, zero where dropped (cached
        per dtype; `mask` must be one this index describes)."""
        bits = self._bits.get(dtype)
        if bits is None:
            bits = self._bits[dtype] = mask.to(_BITS_DTYPE[dtype]).neg_()
        return bits


def zero_dropped(t: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """`t` with the positions `bits` drops set to exactly zero (bitwise, so a NaN or inf there is
    dropped too, at the cost of a multiply)."""
    return t.view(bits.dtype).bitwise_and(bits).view(t.dtype)


def _compressed(mask2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    counts = mask2d.sum(dim=1, dtype=torch.int64)
    ptr = torch.zeros(mask2d.shape[0] + 1, dtype=torch.int64, device=mask2d.device)
    torch.cumsum(counts, dim=0, out=ptr[1:])
    # nonzero() lists positions in row-major order, so columns come out sorted within each row.
    idx = mask2d.nonzero()[:, 1]
    return ptr.to(torch.int32), idx.to(torch.int32).contiguous()


def pattern_tensors(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row_ptr, col_idx, col_ptr, row_idx) of `mask` (bool, shape (M, ...)) viewed as (M, prod(rest))."""
    mask2d = mask.reshape(mask.shape[0], math.prod(mask.shape[1:]))
    row_ptr, col_idx = _compressed(mask2d)
    col_ptr, row_idx = _compressed(mask2d.t())
    return row_ptr, col_idx, col_ptr, row_idx


def build_index(mask: torch.Tensor) -> PatternIndex:
    """Index of `mask` (bool, shape (M, ...)) viewed as (M, prod(rest))."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got {mask.dtype}")
    if mask.dim() < 2:
        raise ValueError(f"mask: expected at least 2 dims (out, in, ...), got shape {tuple(mask.shape)}")
    if mask.numel() >= 2**31:
        raise ValueError(f"mask: {mask.numel()} entries exceed the int32 index range")
    return PatternIndex(mask.shape[0], math.prod(mask.shape[1:]), *pattern_tensors(mask), mask,
                        tensor_version(mask))


def index_from_tensors(mask: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, col_ptr: torch.Tensor,
                       row_idx: torch.Tensor) -> PatternIndex:
    """An index of `mask` from its four tensors, as a traced op receives them (no check: the public
    op checked them before the trace)."""
    return PatternIndex(mask.shape[0], math.prod(mask.shape[1:]), row_ptr, col_idx, col_ptr, row_idx,
                        mask, tensor_version(mask))
