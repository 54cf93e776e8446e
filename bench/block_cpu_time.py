"""Block layer training steps vs dense by CPU time (`time.process_time`), interleaved in one process:
a figure that a shared, overloaded machine does not distort the way wall-clock time is (a process
descheduled by another accumulates no CPU time). One thread (CPU time of several threads would add
their spinning). Each row: forward + grad-input + grad-weight of the native block kernels against
F.linear / F.conv2d and their autograd backward on the masked weight, minimum over the rounds.

Run: ``OMP_NUM_THREADS=1 python -m bench.block_cpu_time [--against REV]`` (prints a markdown table;
with --against, REV's build, compiled by bench.compare_builds.load_revision, is timed in the same
rounds and its speed-up printed beside). ``--against REV --paired N`` instead times this build, REV's
and dense back to back in rotated order for N rounds and prints the median and quartiles of the
per-round ratio this / REV: under load the minimum of 5 rounds moved by 10-30% between runs, the
paired median by a few percent (bench/NOTES.md, block kernels fourth pass).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ebsparse.formats.block import build_block_index, random_block_mask

BLOCKS = [(8, 8), (16, 16), (32, 32)]
SPARSITIES = [0.75, 0.9, 0.95]
ROUNDS = 5


def _cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return 1e3 * (time.process_time() - start)


def _pair(sparse, dense, rounds=ROUNDS, other=None) -> tuple[float, ...]:
    """Minimum CPU ms of (sparse, dense[, other]) over the rounds, timed alternately."""
    fns = [sparse, dense] + ([other] if other else [])
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, f in enumerate(fns):
            best[i] = min(best[i], _cpu_ms(f))
    return tuple(best)


def _steps(kind: str, block, sparsity: float, ops=None):
    g = torch.Generator().manual_seed(0)
    ops = ops or torch.ops.ebsparse
    if kind == "linear":
        x, w, dy = (torch.randn(s, generator=g) for s in ((1024, 1024), (1024, 1024), (1024, 1024)))
    else:
        x, w, dy = (torch.randn(s, generator=g) for s in ((8, 256, 32, 32), (256, 256, 3, 3), (8, 256, 32, 32)))
    mask = random_block_mask(w.shape, 1 - sparsity, block, generator=g)
    idx = build_block_index(mask, block)
    wm = (w * mask).requires_grad_()
    xd = x.clone().requires_grad_()
    one = [1, 1]
    if kind == "linear":
        def sparse():
            ops.bsr_linear(x, w, None, idx.brow_ptr, idx.bcol_idx, *block)
            ops.bsr_linear_backward(dy, x, w, *idx.tensors(), *block, True, True)

        def dense():
            F.linear(xd, wm).backward(dy)
    else:
        def sparse():
            ops.bsr_conv2d(x, w, None, idx.brow_ptr, idx.bcol_idx, *block, one, one, one)
            ops.bsr_conv2d_backward(dy, x, w, *idx.tensors(), *block, one, one, one, True, True)

        def dense():
            F.conv2d(xd, wm, None, 1, 1).backward(dy)
    return sparse, dense


def table(against: str | None = None) -> str:
    torch.set_num_threads(1)
    other = None
    if against:
        from bench.compare_builds import load_revision
        other = load_revision(against)
    extra = f" {against} ms | {against} speed-up |" if other else ""
    lines = [f"CPU time, 1 thread, CPU capability {torch.ops.ebsparse.cpu_capability()}", "",
             "| layer | block | sparsity | block ms | dense ms | speed-up |" + extra,
             "|---|---|---|---|---|---|" + ("---|---|" if other else "")]
    print("\n".join(lines), flush=True)  # the rows follow as they are measured
    for kind, name in (("linear", "linear 1024x1024, batch 1024"), ("conv", "conv 256->256 3x3 32x32, batch 8")):
        for sparsity in SPARSITIES:
            for block in BLOCKS:
                sparse, dense = _steps(kind, block, sparsity)
                t = _pair(sparse, dense, other=_steps(kind, block, sparsity, other)[0] if other else None)
                s, d = t[0], t[1]
                row = f"| {name} | {block[0]}x{block[1]} | {sparsity} | {s:.1f} | {d:.1f} | {d / s:.2f}x |"
                if other:
                    row += f" {t[2]:.1f} | {d / t[2]:.2f}x |"
                lines.append(row)
                print(row, flush=True)
    return "\n".join(lines)


def paired_table(against: str, rounds: int, blocks=BLOCKS) -> str:
    """Per-round ratios of this build's step to `against`'s, the two and dense timed back to back in
    rotated order (each round starts with another of the three)."""
    torch.set_num_threads(1)
    from bench.compare_builds import load_revision
    other = load_revision(against)
    lines = [f"CPU time, 1 thread, {rounds} rounds, CPU capability {torch.ops.ebsparse.cpu_capability()}", "",
             f"| layer | block | sparsity | this / {against}: median [q1, q3] | min ms this / {against} / dense |",
             "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for kind in ("linear", "conv"):
        for sparsity in SPARSITIES:
            for block in blocks:
                ours, dense = _steps(kind, block, sparsity)
                fns = [ours, _steps(kind, block, sparsity, other)[0], dense]
                for f in fns:
                    f()
                times, ratios = [[] for _ in fns], []
                for r in range(rounds):
                    now = [0.0] * len(fns)
                    for k in range(len(fns)):
                        i = (r + k) % len(fns)
                        now[i] = _cpu_ms(fns[i])
                    for i, t in enumerate(now):
                        times[i].append(t)
                    ratios.append(now[0] / now[1])
                q = statistics.quantiles(ratios, n=4)
                row = (f"| {kind} | {block[0]}x{block[1]} | {sparsity} | {statistics.median(ratios):.3f} "
                       f"[{q[0]:.3f}, {q[2]:.3f}] | {min(times[0]):.2f} / {min(times[1]):.2f} / {min(times[2]):.1f} |")
                lines.append(row)
                print(row, flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="git revision whose build is timed alongside")
    parser.add_argument("--paired", type=int, metavar="ROUNDS",
                        help="with --against: per-round ratios over ROUNDS rotated rounds instead of minima")
    parser.add_argument("--blocks", default=",".join(f"{bo}x{bi}" for bo, bi in BLOCKS))
    args = parser.parse_args()
    if args.paired and not args.against:
        parser.error("--paired needs --against REV")
    if args.paired:
        paired_table(args.against, args.paired, [tuple(map(int, b.split("x"))) for b in args.blocks.split(",")])
    else:
        table(args.against)
