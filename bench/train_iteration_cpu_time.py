"""`Trainer.train_step` on the digits configs, dense vs Static vs RigL at 0.75, by CPU time.

The wall-clock rows of `bench/test_train_iteration.py` move by 2x on the shared machine; CPU time of
one thread does not count the time a process waits for a core. Same trainers as that benchmark
(`_trainer`), the variants interleaved in rounds of `--steps` steps (order rotated per round); a
row's time is its minimum round mean, plus, for RigL, its update step's extra CPU time (an update
step less the ordinary step before it, minimum of `--updates` updates) divided by ΔT.
`--profile` adds where each step's time goes (torch.profiler, self CPU time per part).

Run: ``OMP_NUM_THREADS=1 python -m bench.train_iteration_cpu_time [--rounds 12] [--profile]``
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time

import torch

from bench.test_train_iteration import _trainer

VARIANTS = ("dense", "static-0.75", "rigl-0.75")

# torch.profiler op name -> part of the step (first matching rule wins)
_PARTS = [
    ("sparse conv/linear kernels (native)", lambda n: n.startswith("ebsparse::")),
    ("dense convs (oneDNN)", lambda n: n in ("aten::mkldnn_convolution", "aten::convolution_backward")),
    ("bmm: attention, 1x1 convs as products", lambda n: n in ("aten::bmm", "aten::baddbmm", "aten::_softmax",
                                                              "aten::_softmax_backward_data")),
    ("GroupNorm + SiLU", lambda n: "group_norm" in n or "silu" in n or "GroupNormSilu" in n),
    ("sparse layers' autograd.Functions (Python)", lambda n: n.startswith(("_Eager", "_Pointwise"))),
    ("optimizer", lambda n: "adam" in n.lower() or n.startswith("Optimizer")),
    ("elementwise, copies, reductions, small matmuls", lambda n: n.startswith("aten::") and n.split("::")[1] in (
        "add", "add_", "mul", "mul_", "copy_", "cat", "sum", "where", "fill_", "linalg_vector_norm", "addmm", "mm",
        "equal", "bitwise_and", "bitwise_and_", "pow", "div", "div_", "sub", "upsample_nearest2d",
        "upsample_nearest2d_backward", "constant_pad_nd", "zero_", "clone")),
    ("other (allocation, views, autograd engine)", lambda n: True),
]


def _part(name: str) -> str:
    return next(part for part, rule in _PARTS if rule(name))


def _update_extra(trainer, repeats: int) -> float:
    """CPU seconds an update step takes over the ordinary step before it (minimum of `repeats`)."""
    sp = trainer.plugins[0].sparsifier
    extra = []
    for _ in range(repeats):
        while not sp.schedule.is_update(sp.steps + 2):
            trainer.train_step()
        start = time.process_time()
        trainer.train_step()
        ordinary = time.process_time() - start
        start = time.process_time()
        trainer.train_step()
        extra.append(time.process_time() - start - ordinary)
        assert sp.last_update.get("step") == sp.steps, "the timed step was not an update"
    return min(extra)


def _profile(trainers, rounds: int, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    best = {k: {} for k in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    trainer.train_step()
            for e in prof.key_averages():
                ms = e.self_cpu_time_total / steps / 1e3
                best[name][e.key] = min(best[name].get(e.key, float("inf")), ms)
    parts = {k: collections.Counter() for k in trainers}
    for name in trainers:
        for op, ms in best[name].items():
            parts[name][_part(op)] += ms
    names = list(trainers)
    print(f"\n| part (self CPU ms per step, profiled; minimum per op over {rounds} rounds of {steps} steps) | "
          + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for part, _ in _PARTS:
        print(f"| {part} | " + " | ".join(f"{parts[n][part]:.1f}" for n in names) + " |")
    print("| total | " + " | ".join(f"{sum(parts[n].values()):.1f}" for n in names) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--updates", type=int, default=2, help="RigL update steps timed")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: _trainer("digits", v, f"{tmp}/{v}") for v in VARIANTS}
        for trainer in trainers.values():
            trainer.train_step()  # past the update the bench's _trainer set up
            trainer.train_step()
        names = list(trainers)
        ms = {v: [] for v in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.process_time()
                for _ in range(args.steps):
                    trainers[name].train_step()
                ms[name].append((time.process_time() - start) / args.steps * 1e3)
        every = trainers["rigl-0.75"].plugins[0].sparsifier.config.update_every
        extra = 1e3 * _update_extra(trainers["rigl-0.75"], args.updates)
        batch = trainers["dense"].config.training.batch_size
        rows = {v: min(ms[v]) for v in names}
        rows["rigl-0.75"] += extra / every
        print(f"1 thread, CPU time, {args.rounds} rounds of {args.steps} steps, batch {batch}; RigL's update "
              f"adds {extra:.1f} ms once per {every} steps (included below)")
        print("| variant | ms/step (min) | median | images/s | x dense (min) | x dense (median) |")
        print("|---|---|---|---|---|---|")
        for v in names:
            med = statistics.median(ms[v])
            print(f"| {v} | {rows[v]:.1f} | {med:.1f} | {batch / rows[v] * 1e3:.0f} | "
                  f"{rows['dense'] / rows[v]:.2f}x | {statistics.median(ms['dense']) / med:.2f}x |")
        if args.profile:
            _profile(trainers, rounds=3, steps=args.steps)


if __name__ == "__main__":
    main()
