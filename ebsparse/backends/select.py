"""Automatic backend choice: capability first, then the measured fastest, cached per key.

The key is (op, device, dtype, threads, shapes, density rounded to 0.01, bias). Each usable backend
runs a forward + grad-input + grad-weight a few times once per key, in interleaved rounds (so a
burst of load on a shared machine hits every candidate alike), keeping each one's minimum; a
sparse backend wins only if it beats dense by `MARGIN`, so that measurement noise near the
break-even density cannot make a sparse layer slower than its dense fallback; a close call (the best
sparse backend between the margin and dense) gets more rounds before it is decided. A candidate
that fails (refuses these inputs, a launch error) is dropped with a warning; dense is the fallback. Every candidate,
dense included, is timed through the kernels the op runs (`timing.time_step`). Under
`torch.compile` nothing can be timed, so an unmeasured key gets dense there (measure in eager
first: one eager step warms the cache). Set EBSPARSE_AUTOTUNE_CACHE to a JSON path to keep the
choices across processes.
"""

from __future__ import annotations

import json
import os
import threading
import warnings

import torch

from ebsparse.backends.registry import registered_backends

MARGIN = 0.9  # a sparse backend must take < 90% of dense's time to be chosen
ROUNDS = 2  # interleaved measuring rounds per candidate
# More rounds of the best sparse backend and dense when it landed between MARGIN and 1x dense: two
# rounds on a noisy machine can put a clearly faster sparse layer above the margin.
CLOSE_CALL_ROUNDS = 4

_lock = threading.Lock()
_choices: dict[str, str] = {}
_timings: dict[str, dict[str, float]] = {}
_loaded_path: str | None = None


def _cache_path() -> str | None:
    return os.environ.get("EBSPARSE_AUTOTUNE_CACHE") or None


def _load() -> None:
    global _loaded_path
    path = _cache_path()
    if path and path != _loaded_path:
        _loaded_path = path
        if os.path.exists(path):
            with open(path) as f:
                _choices.update(json.load(f))


def _save() -> None:
    path = _cache_path()
    if path:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(_choices, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def auto_candidates(op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Backends that can run `op` here and are fit for production use (the Triton interpreter
    on the CPU is a testing mode, never chosen automatically)."""
    names = []
    for name, backend in registered_backends().items():
        if name == "triton" and device.type != "cuda":
            continue
        if not backend.unavailable_reasons(op, device, dtype):
            names.append(name)
    return names


def _measured(name: str, measure, op: str) -> float | None:
    """`measure(name)`, or None when a sparse candidate cannot run these inputs: quietly when it
    says so with NotImplementedError (a backend whose kernels take only some patterns or shapes),
    with a warning for any other failure (a launch error). It is dropped and the choice falls back
    to the others, dense last. Dense failing is the caller's own error and propagates."""
    if name == "dense":
        return measure(name)
    try:
        return measure(name)
    except NotImplementedError:
        return None  # the candidate does not take these inputs (e.g. a mask that is not 2:4): no failure
    except Exception as exc:  # noqa: BLE001 - any failure of a candidate must not break the layer
        warnings.warn(f"auto: backend {name!r} failed while measuring {op} ({type(exc).__name__}: {exc}); "
                      "it is skipped for these inputs", RuntimeWarning, stacklevel=3)
        return None


def choose(op: str, device: torch.device, dtype: torch.dtype, measure, key: tuple) -> str:
    full_key = repr((op, device.type, str(dtype), torch.get_num_threads()) + tuple(key))
    with _lock:
        _load()
        if full_key in _choices:
            return _choices[full_key]
    candidates = auto_candidates(op, device, dtype)
    if candidates == ["dense"] or torch.compiler.is_compiling() or measure is None:
        return "dense"
    timings = {name: float("inf") for name in candidates}
    for _ in range(ROUNDS):
        for name in list(timings):
            seconds = _measured(name, measure, op)
            if seconds is None:
                del timings[name]
            else:
                timings[name] = min(timings[name], seconds)
    best = min(timings, key=timings.get)
    if best != "dense" and MARGIN * timings["dense"] <= timings[best]:
        for _ in range(CLOSE_CALL_ROUNDS):
            for name in (best, "dense"):
                timings[name] = min(timings[name], measure(name))
    if best != "dense" and timings[best] >= MARGIN * timings["dense"]:
        best = "dense"
    with _lock:
        _choices[full_key] = best
        _timings[full_key] = timings
        _save()
    return best


def choices() -> dict[str, tuple[str, dict[str, float]]]:
    """What auto chose per key so far, with the measured seconds of each candidate."""
    with _lock:
        return {k: (v, dict(_timings.get(k, {}))) for k, v in _choices.items()}


def recorded() -> dict[str, str]:
    """Every choice auto made or loaded in this process, by key (a copy). A trainer saves them with
    its checkpoint: a resumed run must run the kernels the interrupted one ran, because two backends'
    floating-point sums differ in their last bits, and a close call measured again can flip."""
    with _lock:
        return dict(_choices)


def restore(saved: dict[str, str]) -> None:
    """Take the choices of `recorded` (from a checkpoint) instead of measuring those keys again."""
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in saved.items()):
        raise ValueError(f"saved: expected a dict of str keys to backend names (from recorded()), got {saved!r:.200}")
    unknown = sorted(set(saved.values()) - set(registered_backends()))
    if unknown:
        raise ValueError(f"saved: backend names {unknown} are not registered here ({sorted(registered_backends())})")
    with _lock:
        _choices.update(saved)


def clear() -> None:
    with _lock:
        _choices.clear()
        _timings.clear()
