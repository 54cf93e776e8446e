"""What a sparse layer derives from its bool mask, and how it notices that the mask changed.

Layers cache what they build from the mask (the pattern index, and through it the layouts every
backend derives from it). It is rebuilt when the mask's version counter moves,
which every supported way of changing a mask does: `set_mask`, in-place ops on the `mask` buffer
(`mask[...] = False`, `mask.copy_(m)`, `mask.logical_and_(m)`) and `load_state_dict`. Checking the
counter costs nothing, so it runs on every forward, eager and compiled.

Writes that bypass the counter (`mask.data[...] = ...`, `mask.numpy()[...] = ...`, DLPack) can only
be found by reading the whole mask: the state keeps a copy of the mask its caches were built from
and compares it with the buffer. That costs a read of the mask (a large part of a small-batch
linear layer's forward on a CPU, a device sync on a GPU), so it runs where it is cheap next to the
work around it: `train()`/`eval()` and `load_state_dict`, which warn and rebuild, and every forward
only when ``EBSPARSE_STRICT_MASKS=1``, which raises (to find the code that edits masks that way).

States live in a registry keyed by the mask tensor itself (held weakly), so the eager forward and
the `ebsparse::mask_index` op inside a compiled graph share one index per mask, and a replaced or
copied mask (`module.to(...)`, `deepcopy`) starts a fresh state.
"""

from __future__ import annotations

import os
import warnings
import weakref

import torch

from ebsparse.formats import build_index
from ebsparse.formats.block import BlockIndex, build_block_index
from ebsparse.formats.index import PatternIndex, tensor_version

STRICT_ENV = "EBSPARSE_STRICT_MASKS"

SUPPORTED_EDITS = ("change a mask with set_mask(), an in-place op on the mask buffer "
                   "(mask[...] = False, mask.copy_(new)) or load_state_dict()")


def strict_masks() -> bool:
    """Whether every forward compares the mask with the one its caches were built from."""
    return os.environ.get(STRICT_ENV, "0").strip() not in ("", "0")


def same_contents(mask: torch.Tensor, copy: torch.Tensor) -> bool:
    """`torch.equal` for two bool tensors of one shape, compared as 64-bit words where the layout
    allows (several times faster than comparing bools one by one). `copy` is contiguous."""
    if not mask.is_contiguous() or mask.storage_offset() % 8:
        return torch.equal(mask, copy)
    if mask.numel() % 8 == 0:  # one comparison of words: this runs for every mask on every train()
        return torch.equal(mask.reshape(-1).view(torch.int64), copy.reshape(-1).view(torch.int64))
    a, b = mask.reshape(-1).view(torch.uint8), copy.reshape(-1).view(torch.uint8)
    words = a.numel() // 8 * 8
    return torch.equal(a[:words].view(torch.int64), b[:words].view(torch.int64)) and \
        torch.equal(a[words:], b[words:])


class MaskState:
    """The caches derived from one mask tensor and the key and copy of the mask they were built from."""

    def __init__(self, mask: torch.Tensor):
        self._mask = weakref.ref(mask)
        self._key: tuple | None = None
        self._built_from: torch.Tensor | None = None
        self._index: PatternIndex | None = None
        self._block_index: dict = {}  # block shape -> BlockIndex

    def is_for(self, mask: torch.Tensor) -> bool:
        return self._mask() is mask

    def _follow_counter(self, mask: torch.Tensor) -> None:
        """Drop the caches if the mask was replaced or modified through its version counter (an
        inference mask, which has none, by comparing its contents)."""
        version = tensor_version(mask)
        key = (mask.data_ptr(), version, mask.device)
        if key != self._key or (version is None and not same_contents(mask, self._built_from)):
            self._key = key
            self._built_from = mask.detach().clone()
            self._index = None
            self._block_index = {}

    def check_edits(self, mask: torch.Tensor, where: str, *, strict: bool) -> bool:
        """Compare the mask with the one the caches were built from. An edit that bypassed the version
        counter raises RuntimeError if `strict`, else warns and drops the caches. True if it found one."""
        self._follow_counter(mask)
        if same_contents(mask, self._built_from):
            return False
        message = (f"{where}: the mask was modified without going through its version counter (e.g. "
                   f"through mask.data or mask.numpy()), so computations since that edit may have used "
                   f"the previous mask. To have every forward see a new mask, {SUPPORTED_EDITS}.")
        if strict:
            raise RuntimeError(message)
        warnings.warn(message + " The edit is in effect from now on.", RuntimeWarning, stacklevel=3)
        self._key = None
        self._follow_counter(mask)
        return True

    def index(self, mask: torch.Tensor, where: str) -> PatternIndex:
        """CSR/CSC of the current mask (built once per mask version)."""
        self._follow_counter(mask)
        if strict_masks():
            self.check_edits(mask, where, strict=True)
        if self._index is None:
            self._index = build_index(mask)
        return self._index


    def block_index(self, mask: torch.Tensor, block: tuple[int, int], where: str) -> BlockIndex:
        """BSR of the current mask with `block` blocks (built once per mask version)."""
        self._follow_counter(mask)
        if strict_masks():
            self.check_edits(mask, where, strict=True)
        index = self._block_index.get(block)
        if index is None:
            index = self._block_index[block] = build_block_index(mask, block)
        return index


_STATES: dict[int, MaskState] = {}


def mask_state(mask: torch.Tensor) -> MaskState:
    """The state of `mask` (created on first use, forgotten when the tensor is freed)."""
    state = _STATES.get(id(mask))
    if state is None or not state.is_for(mask):
        state = MaskState(mask)
        _STATES[id(mask)] = state
        weakref.finalize(mask, _forget, id(mask), weakref.ref(state))
    return state


def _forget(key: int, state_ref: weakref.ref) -> None:
    if _STATES.get(key) is state_ref():
        del _STATES[key]


# ---- under torch.compile: the index comes from an opaque op, looked up when the graph runs ------

# cudagraph_unsafe: a CUDA graph would replay the index of the recording run, whatever the mask is.
@torch.library.custom_op("ebsparse::mask_index", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def _mask_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Inductor may hand an op's dead output to a later buffer of the same size and dtype, which
    # would overwrite the cached index: the two pointer arrays (fixed sizes) are returned as copies.
    # The two nnz-long arrays have a size only they have (unbacked), and copying them would cost
    # a noticeable part of a small layer's forward.
    row_ptr, col_idx, col_ptr, row_idx = mask_state(mask).index(mask, "compiled forward").tensors()
    return row_ptr.clone(), col_idx, col_ptr.clone(), row_idx


@_mask_index.register_fake
def _(mask):
    nnz = torch.library.get_ctx().new_dynamic_size()
    rows = mask.shape[0]
    cols = mask.numel() // rows
    return tuple(mask.new_empty(n, dtype=torch.int32) for n in (rows + 1, nnz, cols + 1, nnz))


def current_index(mask: torch.Tensor, where: str) -> PatternIndex:
    """The index of `mask` as it is now, eager or inside a compiled graph (where a traced
    `self._index` would be frozen into the graph and miss every later mask change)."""
    if torch.compiler.is_compiling():
        rows = mask.shape[0]
        return PatternIndex(rows, mask.numel() // rows, *_mask_index(mask))
    return mask_state(mask).index(mask, where)
