"""Interleaved timing by CPU time (`time.process_time`) for the bench scripts that compare a few
callables in one process on a shared machine, where wall-clock time is distorted by load.

The order rotates by one every round: in a fixed order, identical code measured 5-12% slower in
whichever position ran first (the caches the previous callable left behind)."""

from __future__ import annotations

import time
from typing import Any, Callable


def cpu_ms(fn: Callable[[], object], repeats: int = 1, clock: Callable[[], float] = time.process_time) -> float:
    """Milliseconds of `clock` per call of `fn`, averaged over `repeats` calls."""
    start = clock()
    for _ in range(repeats):
        fn()
    return 1e3 * (clock() - start) / repeats


def rotated_times(fns: dict[str, Callable[[], object]], rounds: int, repeats: int = 1,
                  clock: Callable[[], float] = time.process_time) -> dict[str, list[float]]:
    """Each callable's ms in every round (after one untimed call each: allocator, backend resolution)."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(cpu_ms(fns[name], repeats, clock))
    return times


def rotated_min(fns: dict[str, Callable[[], object]], rounds: int, repeats: int = 1,
                clock: Callable[[], float] = time.process_time) -> dict[str, float]:
    """Each callable's minimum ms over the rounds (see `rotated_times`)."""
    return {name: min(t) for name, t in rotated_times(fns, rounds, repeats, clock).items()}


def with_attribute(fn: Callable[[], object], owner: Any, name: str, value: Any) -> Callable[[], None]:
    """`fn` run with ``owner.name`` set to `value` for the call (restored after): a step timed with
    one code path of a model module swapped for another."""
    def run() -> None:
        saved = getattr(owner, name)
        setattr(owner, name, value)
        try:
            fn()
        finally:
            setattr(owner, name, saved)
    return run


def swapped_step_rows(steps: dict[str, Callable[[], object]], owner: Any, name: str, value: Any, what: str,
                      rounds: int) -> list[str]:
    """A markdown table of each model's training step (`steps`: model name -> step) with ``owner.name``
    set to `value` (ATen's `what`) against the step as it is (ebsparse's `what`), interleaved; minimum
    CPU ms over `rounds`."""
    fns = {}
    for model_name, step in steps.items():
        fns[f"{model_name} aten"] = with_attribute(step, owner, name, value)
        fns[f"{model_name} ebsparse"] = step
    best = rotated_min(fns, rounds, repeats=1)
    rows = [f"| model | step ms, ATen {what} | step ms, ebsparse {what} | saved ms | speed-up |",
            "| --- | --- | --- | --- | --- |"]
    for model_name in steps:
        before, after = best[f"{model_name} aten"], best[f"{model_name} ebsparse"]
        rows.append(f"| {model_name} | {before:.0f} | {after:.0f} | {before - after:.0f} | {before / after:.3f}x |")
    return rows
