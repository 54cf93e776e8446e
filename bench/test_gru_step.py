"""ChiroDiff's GRU training step (forward + backward), dense nn.GRU against SparseGRU at densities
0.1 (sparsity 0.9) and 0.25, interleaved round-robin in one process (bench/gru_shapes.py says the
shapes). Issue 23's goal: the step at 0.9 sparsity >= 2x the dense GRU's.

Every round runs each model's step once, the order rotated by one model per round; the first call
of each (resolving the input projections' backends) is not timed. Rows: minimum and median over the
rounds, speed-up against dense's minimum (the median's in the notes).

Run: ``pytest bench/test_gru_step.py --benchmark`` (EBSPARSE_BENCH_ROUNDS, default 7). On a loaded
machine prefer ``OMP_NUM_THREADS=1 python -m bench.gru_cpu_time`` (CPU time).
"""

from __future__ import annotations

import torch

from bench import gru_shapes, settings
from bench.test_unet_step import record, round_robin

ROUNDS = 7


def test_chirodiff_gru_step_all_models(benchmark):
    steps = {name: gru_shapes.train_step(gru_shapes.build(name)) for name in gru_shapes.MODELS}
    for step in steps.values():
        step()
    rounds = settings.rounds(ROUNDS)
    benchmark.group = (f"ChiroDiff GRU train step b{gru_shapes.BATCH} L{gru_shapes.LENGTH} H{gru_shapes.HIDDEN}, "
                       f"{gru_shapes.LAYERS} layers bidirectional, round-robin")
    times = round_robin(steps, rounds, benchmark)
    if benchmark.stats is None:  # --benchmark-disable
        return
    bounds = {name: 1.0 if name == "dense" else float(name.split("-")[1]) for name in steps}
    record(benchmark.group, times, bounds, {name: gru_shapes.useful_gflop(name) for name in steps})
    benchmark.extra_info.update({f"{n}_ms": [1e3 * s for s in v] for n, v in times.items()})
    benchmark.extra_info["threads"] = torch.get_num_threads()
