"""ChiroDiff's GRU training step by CPU time (`time.process_time`), dense nn.GRU against SparseGRU,
interleaved in one process: a figure a shared, overloaded machine does not distort the way wall
time is. One thread (CPU time of several threads would add their spinning). Rows: forward alone and
forward + backward, minimum over the rounds, and the speed-up against dense. Shapes:
bench/gru_shapes.py.

Run: ``OMP_NUM_THREADS=1 python -m bench.gru_cpu_time`` (prints a markdown table).
"""

from __future__ import annotations

import time

import torch

from bench import gru_shapes
from ebsparse import backends

ROUNDS = 7


def _cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return 1e3 * (time.process_time() - start)


def _forward(model):
    x = torch.randn(gru_shapes.BATCH, gru_shapes.LENGTH, gru_shapes.INPUT, generator=torch.Generator().manual_seed(0))

    def step():
        with torch.no_grad():
            model(x)

    return step


def main(rounds: int = ROUNDS) -> str:
    torch.set_num_threads(1)
    models = {name: gru_shapes.build(name) for name in gru_shapes.MODELS}
    lines = [f"ChiroDiff GRU b{gru_shapes.BATCH} L{gru_shapes.LENGTH} H{gru_shapes.HIDDEN}, {gru_shapes.LAYERS} "
             f"layers bidirectional, 1 thread, CPU ms (min of {rounds} interleaved rounds)", "",
             "| model | forward ms | speed-up | forward + backward ms | speed-up | useful GFLOP/s "
             "| backends that ran |",
             "|---|---|---|---|---|---|---|"]
    for kind, make in (("forward", _forward), ("train", gru_shapes.train_step)):
        steps = {name: make(model) for name, model in models.items()}
        for step in steps.values():
            step()
        best = {name: float("inf") for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                best[name] = min(best[name], _cpu_ms(step))
        if kind == "forward":
            forward = best
    ran = {}
    for name, model in models.items():  # auto chooses per shape: say what it chose
        with backends.trace() as calls:
            gru_shapes.train_step(model)()
        ran[name] = ", ".join(sorted({f"{op} {backend}" for op, _, backend in calls})) or "torch"
    for name in models:
        rate = gru_shapes.useful_gflop(name) / best[name] * 1e3
        lines.append(f"| {name} | {forward[name]:.1f} | {forward['dense'] / forward[name]:.2f}x | {best[name]:.1f} | "
                     f"{best['dense'] / best[name]:.2f}x | {rate:.1f} | {ran[name]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
