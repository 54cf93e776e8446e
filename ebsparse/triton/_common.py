"""Shared pieces of the Triton backend: the guarded triton import, availability, argument checks.

Importing this package never fails: without triton, the kernels are never built (every launcher
first calls `require_available`) and the pure-PyTorch references still work.

Kernels are wrapped with `kernel`, which applies `triton.jit` at the first launch rather than at
import, so `TRITON_INTERPRET=1` takes effect whenever it is set before that launch, even when
triton itself was imported earlier (torch._dynamo imports it). For the same reason the kernels use
only `triton.language` builtins: its helpers written in Triton (`tl.sum`, `tl.zeros`, `tl.cdiv`)
are decorated when triton is imported and cannot run in the interpreter if that happened before
TRITON_INTERPRET was set. Sums are `tl.reduce(x, axis, SUM)`, which is what `tl.sum` compiles to
and what the interpreter evaluates with numpy.

The argument checks mirror `csrc/cpu/checks.h` and raise `RuntimeError` with the same wording, so
callers see the same exception type whichever backend runs an op.
"""

from __future__ import annotations

import weakref

import torch

from ebsparse.formats.index import tensor_version

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR: str | None = None
    # The combine function of tl.sum; the interpreter recognises it and sums with numpy.
    SUM = tl.standard._sum_combine
except Exception as exc:  # ImportError, or a broken install failing at import time
    triton = None
    tl = None
    SUM = None
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


class kernel:
    """Decorator: `triton.jit(fn)` made at the first launch (`k[grid](...)`) in the mode that
    TRITON_INTERPRET selects then (compiled or interpreted), cached per mode."""

    def __init__(self, fn):
        self.fn = fn
        self._built = {}

    def __getitem__(self, grid):
        mode = _interpreting()
        if mode not in self._built:
            self._built[mode] = triton.jit(self.fn)
        return self._built[mode][grid]


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    """Whether triton runs kernels in its host interpreter (TRITON_INTERPRET=1), read now."""
    return bool(triton.knobs.runtime.interpret)


def unavailable_reasons(device: torch.device | str) -> list[str]:
    """Why the Triton kernels cannot run on `device`; an empty list when they can.

    Usable when triton imports and either `device` is a CUDA device that torch can use, or it is
    the CPU and `TRITON_INTERPRET=1` is set (the interpreter; slow, for tests).
    """
    device = torch.device(device)
    if TRITON_IMPORT_ERROR is not None:
        return [f"triton is not importable ({TRITON_IMPORT_ERROR})"]
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return ["device is CUDA but torch.cuda.is_available() is False"]
        return []
    if device.type == "cpu":
        if _interpreting():
            return []
        return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 (slow; for tests)"]
    return [f"Triton kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1), got device {device}"]


def require_available(device: torch.device, op: str) -> None:
    reasons = unavailable_reasons(device)
    if reasons:
        raise RuntimeError(f"{op}: the Triton backend cannot run on {device}: " + "; ".join(reasons))


def acc_dtype(dtype: torch.dtype):
    """Accumulator type of the kernels: float64 for float64, float32 for everything else."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---- argument checks (csrc/cpu/checks.h) ---------------------------------------------------------

def check_index(t: torch.Tensor, name: str, numel: int, like: torch.Tensor) -> None:
    if t.dim() != 1 or t.dtype != torch.int32:
        raise RuntimeError(f"{name}: expected a 1-D int32 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise RuntimeError(f"{name}: expected a contiguous tensor")
    if t.device != like.device:
        raise RuntimeError(f"{name}: expected device {like.device}, got {t.device}")
    if numel >= 0 and t.numel() != numel:
        raise RuntimeError(f"{name}: expected {numel} entries, got {t.numel()}")


def check_pattern(ptr: torch.Tensor, idx: torch.Tensor, rows: int, ptr_name: str, idx_name: str,
                  like: torch.Tensor, cols: int) -> None:
    """The pattern's tensors (csrc/cpu/checks.h's check_pattern) and, once per pattern while its
    tensors live unmodified, its values (check_pattern_values): a kernel indexes the weight by
    them, and on a GPU an out-of-range index is an illegal address that ends the CUDA context."""
    check_index(ptr, ptr_name, rows + 1, like)
    check_index(idx, idx_name, -1, like)
    versions = tensor_version(ptr), tensor_version(idx)  # None (inference tensors): checked on every call
    key = (id(ptr), versions[0], id(idx), versions[1], cols)
    cached = _checked_patterns.get(key)
    if cached is not None and None not in versions and cached[0]() is ptr and cached[1]() is idx:
        return
    _check_pattern_values(ptr, idx, cols, ptr_name, idx_name)
    if None in versions:
        return
    if len(_checked_patterns) >= 1024:  # room for every layer's CSR and CSC; forget the oldest
        _checked_patterns.pop(next(iter(_checked_patterns)))
    _checked_patterns[key] = (weakref.ref(ptr), weakref.ref(idx))


_checked_patterns: dict[tuple, tuple] = {}


def _check_pattern_values(ptr, idx, cols, ptr_name, idx_name) -> None:
    """ptr starts at 0, never decreases and ends at idx.numel(); within each row idx strictly
    increases and lies in [0, cols). Checked on a host copy (one transfer per pattern)."""
    p, v = ptr.cpu().long(), idx.cpu().long()
    if int(p[0]) != 0 or int(p[-1]) != v.numel():
        raise RuntimeError(f"{ptr_name}: expected to start at 0 and end at {idx_name}.numel() = {v.numel()}, "
                           f"got {int(p[0])} and {int(p[-1])}")
    steps = p[1:] - p[:-1]
    if bool((steps < 0).any()):
        r = int((steps < 0).nonzero()[0, 0])
        raise RuntimeError(f"{ptr_name}: expected non-decreasing values, got {int(p[r])} then {int(p[r + 1])} "
                           f"at row {r}")
    bad = ((v < 0) | (v >= cols)).nonzero()
    if bad.numel():
        j = int(bad[0, 0])
        raise RuntimeError(f"{idx_name}: expected values in [0, {cols}), got {int(v[j])} at position {j}")
    if v.numel() > 1:
        row_start = torch.zeros(v.numel(), dtype=torch.bool)
        row_start[p[:-1][steps > 0]] = True
        bad = ((v[1:] <= v[:-1]) & ~row_start[1:]).nonzero()
        if bad.numel():
            j = int(bad[0, 0]) + 1
            raise RuntimeError(f"{idx_name}: expected strictly increasing values within each row (sorted, no "
                               f"repeats), got {int(v[j - 1])} then {int(v[j])} at position {j}")


def check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{name}: expected float32, float64, float16 or bfloat16, got {t.dtype}")


def check_same(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.dtype != b.dtype:
        raise RuntimeError(f"{name_b}: expected dtype {a.dtype} (that of {name_a}), got {b.dtype}")
    if a.device != b.device:
        raise RuntimeError(f"{name_b}: expected device {a.device} (that of {name_a}), got {b.device}")


# ---- reference helper ----------------------------------------------------------------------------

def pattern_mask(ptr: torch.Tensor, idx: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Bool (rows, cols) mask with True at (r, idx[j]) for ptr[r] <= j < ptr[r + 1]; the CSR of an
    (M, K) weight gives its mask, the CSC gives the mask's transpose."""
    counts = (ptr[1:] - ptr[:-1]).long()
    r = torch.repeat_interleave(torch.arange(rows, device=ptr.device), counts)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=ptr.device)
    mask[r, idx.long()] = True
    return mask
