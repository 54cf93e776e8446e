"""Block kernels one phase at a time (forward, grad-input, grad-weight) by 1-thread CPU time, next
to the dense ATen call doing the same job, interleaved in one process (as bench/block_cpu_time.py).

Why: the layer-step rows of block_cpu_time say how far a step is from its goal, not which phase
holds it back. `--against REV` also times the block ops of another git revision's build (compiled
by bench.compare_builds.load_revision into its own op namespace) in the same rounds, so a kernel
change is judged by the paired ratio rather than by two runs minutes apart.

Run: ``OMP_NUM_THREADS=1 python -m bench.block_phases [--against REV] [--blocks 32x32,16x16]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench.phases import native_kernels
from ebsparse.formats.block import build_block_index, random_block_mask

PHASES = ["forward", "grad-input", "grad-weight"]


def _cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return 1e3 * (time.process_time() - start)


def calls(kind: str, block, sparsity: float, op):
    """({phase: call} for the block op `op`, {phase: call} for dense ATen, the mask), on
    bench/block_cpu_time.py's shapes. The dense grad-weight is the whole gradient (what dense
    training computes); the block one is zero off the mask."""
    g = torch.Generator().manual_seed(0)
    if kind == "linear":
        x, w, dy = (torch.randn(s, generator=g) for s in ((1024, 1024), (1024, 1024), (1024, 1024)))
    else:
        x, w, dy = (torch.randn(s, generator=g) for s in ((8, 256, 32, 32), (256, 256, 3, 3), (8, 256, 32, 32)))
    mask = random_block_mask(w.shape, 1 - sparsity, block, generator=g)
    t = build_block_index(mask, block).tensors()
    wm = w * mask
    one = [1, 1]
    if kind == "linear":
        sparse = {"forward": lambda: op.bsr_linear(x, w, None, t[0], t[1], *block),
                  "grad-input": lambda: op.bsr_linear_backward(dy, x, w, *t, *block, True, False),
                  "grad-weight": lambda: op.bsr_linear_backward(dy, x, w, *t, *block, False, True)}
        dense = {"forward": lambda: F.linear(x, wm), "grad-input": lambda: dy.mm(wm),
                 "grad-weight": lambda: dy.t().mm(x)}
    else:
        sparse = {"forward": lambda: op.bsr_conv2d(x, w, None, t[0], t[1], *block, one, one, one),
                  "grad-input": lambda: op.bsr_conv2d_backward(dy, x, w, *t, *block, one, one, one, True, False),
                  "grad-weight": lambda: op.bsr_conv2d_backward(dy, x, w, *t, *block, one, one, one, False, True)}

        def conv_backward(which):
            return lambda: torch.ops.aten.convolution_backward(dy, x, wm, None, one, one, one, False, [0, 0], 1,
                                                               [which == 0, which == 1, False])

        dense = {"forward": lambda: F.conv2d(x, wm, None, 1, 1), "grad-input": conv_backward(0),
                 "grad-weight": conv_backward(1)}
    return sparse, dense, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="git revision whose build is timed alongside")
    parser.add_argument("--blocks", default="32x32,16x16")
    parser.add_argument("--sparsities", default="0.75,0.9,0.95")
    parser.add_argument("--layers", default="linear,conv")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ops = {"ours": native_kernels()}
    if args.against:
        from bench.compare_builds import load_revision
        ops[args.against] = load_revision(args.against)
    names = list(ops)
    print("CPU ms, 1 thread, minimum over rounds; speed-up = dense / block")
    print("| layer | block | sparsity | phase | dense | " + " | ".join(names) + " | " +
          " | ".join(f"x ({n})" for n in names) + " |")
    for kind in args.layers.split(","):
        for sparsity in map(float, args.sparsities.split(",")):
            for block in (tuple(map(int, b.split("x"))) for b in args.blocks.split(",")):
                sets = {n: calls(kind, block, sparsity, op) for n, op in ops.items()}
                dense = sets[names[0]][1]
                for phase in PHASES:
                    fns = [dense[phase]] + [sets[n][0][phase] for n in names]
                    for f in fns:
                        f()
                    best = [float("inf")] * len(fns)
                    for r in range(args.rounds):
                        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
                        for i in order:
                            best[i] = min(best[i], _cpu_ms(fns[i]))
                    cells = [f"{b:.2f}" for b in best] + [f"{best[0] / b:.2f}x" for b in best[1:]]
                    print(f"| {kind} | {block[0]}x{block[1]} | {sparsity} | {phase} | " + " | ".join(cells) + " |",
                          flush=True)


if __name__ == "__main__":
    main()
