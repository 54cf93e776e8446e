"""Block layer training steps vs dense by CPU time (`time.process_time`), interleaved in one process:
a figure that a shared, overloaded machine does not distort the way wall-clock time is (a process
descheduled by another accumulates no CPU time). One thread (CPU time of several threads would add
their spinning). Each row: forward + grad-input + grad-weight of the native block kernels against
F.linear / F.conv2d and their autograd backward on the masked weight, minimum over the rounds.

Run: ``OMP_NUM_THREADS=1 python -m bench.block_cpu_time`` (prints a markdown table).
"""

from __future__ import annotations

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


def _pair(sparse, dense, rounds=ROUNDS) -> tuple[float, float]:
    sparse(), dense()
    s = d = float("inf")
    for _ in range(rounds):
        s, d = min(s, _cpu_ms(sparse)), min(d, _cpu_ms(dense))
    return s, d


def _steps(kind: str, block, sparsity: float):
    g = torch.Generator().manual_seed(0)
    ops = torch.ops.ebsparse
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


def table() -> str:
    torch.set_num_threads(1)
    lines = [f"CPU time, 1 thread, CPU capability {torch.ops.ebsparse.cpu_capability()}", "",
             "| layer | block | sparsity | block ms | dense ms | speed-up |", "|---|---|---|---|---|---|"]
    for kind, name in (("linear", "linear 1024x1024, batch 1024"), ("conv", "conv 256->256 3x3 32x32, batch 8")):
        for sparsity in SPARSITIES:
            for block in BLOCKS:
                s, d = _pair(*_steps(kind, block, sparsity))
                lines.append(f"| {name} | {block[0]}x{block[1]} | {sparsity} | {s:.1f} | {d:.1f} | {d / s:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
