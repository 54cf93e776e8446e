"""DiT-S/2 ERK 0.9 training steps with this build's C++ kernels against revision REV's, in one
process: REV's sources (or the globs given) are compiled under their own op namespace by
bench.compare_builds.load_revision, and the named ops of ``torch.ops.ebsparse`` are swapped for
REV's before each of REV's rounds and back after (the Python side is this tree's for both). Rounds
alternate which build runs first; the dense step runs every round for the ratio the DiT bench
reports. The named ops must have the same schemas in both builds.

One thread: CPU time (`time.process_time`); more: wall clock (`time.perf_counter`).

Run: ``python -m bench.dit_builds REV [--threads 2] [--rounds 13]
[--ops csr_linear,csr_linear_backward,csr_mlp_gelu_tanh,csr_mlp_gelu_tanh_backward]
[--sources "cpu/linear/*.cpp,cpu/activation/gelu*.cpp,cpu/capability.cpp,cpu/pattern_cache.cpp,cpu/checks.cpp"]``
(prints one markdown table; bench/NOTES.md keeps the history).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import test_dit_speed as dit
from bench.compare_builds import load_revision

LINEAR_OPS = "csr_linear,csr_linear_backward,csr_mlp_gelu_tanh,csr_mlp_gelu_tanh_backward"
LINEAR_SOURCES = "cpu/linear/*.cpp,cpu/activation/gelu*.cpp,cpu/capability.cpp,cpu/pattern_cache.cpp,cpu/checks.cpp"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rev")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=13)
    parser.add_argument("--ops", default=LINEAR_OPS, help="comma-separated ops of torch.ops.ebsparse to swap")
    parser.add_argument("--sources", default=LINEAR_SOURCES,
                        help="comma-separated globs under csrc/ to compile for REV ('' for all of csrc/)")
    args = parser.parse_args()

    from ebsparse.backends.extension import extension_error

    if extension_error() is not None:  # also loads this build's kernels
        raise SystemExit(f"the native extension is not available: {extension_error()}")
    theirs = load_revision(args.rev, only=tuple(s for s in args.sources.split(",") if s))
    names = args.ops.split(",")
    namespace = torch.ops.ebsparse
    ours = {name: getattr(namespace, name) for name in names}
    other = {name: getattr(theirs, name) for name in names}
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    erk = dit._step(dit._model("erk-0.9")[0])
    dense = dit._step(dit._model("dense")[0])

    def timed(table, step):
        for name, op in table.items():
            setattr(namespace, name, op)
        try:
            start = clock()
            step()
            return clock() - start
        finally:
            for name, op in ours.items():
                setattr(namespace, name, op)

    for table in (ours, other, ours, other):  # warm-up: plans and scratch of both builds
        timed(table, erk)
    times = {"ours": [], "theirs": [], "dense": []}
    for r in range(args.rounds):
        order = [("ours", ours), ("theirs", other)]
        for key, table in order if r % 2 == 0 else order[::-1]:
            times[key].append(timed(table, erk))
        times["dense"].append(timed(ours, dense))
    ratios = [a / b for a, b in zip(times["ours"], times["theirs"])]
    dense_min = min(times["dense"])
    print(f"DiT-S/2 b{dit.BATCH} ERK 0.9 training step, {args.threads} thread(s), "
          f"{'CPU' if args.threads == 1 else 'wall'} ms (min of {args.rounds}), ops swapped: {', '.join(names)}\n")
    print(f"| build | ERK 0.9 ms | dense ms | dense / ERK | this / {args.rev}: median [min, max] of rounds |")
    print("|---|---|---|---|---|")
    for key, label in (("ours", "this"), ("theirs", args.rev)):
        spread = (f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]" if key == "ours" else "")
        print(f"| {label} | {1e3 * min(times[key]):.1f} | {1e3 * dense_min:.1f} | "
              f"{dense_min / min(times[key]):.2f}x | {spread} |")


if __name__ == "__main__":
    main()
