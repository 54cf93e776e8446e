"""Dropout by 1-thread CPU time (`time.process_time`): ebsparse's op against ATen's `F.dropout`,
forward + backward at the CIFAR-10 DDPM U-Net's shapes, and the U-Net training step (dense and
ERK 0.9, bench/test_unet_step.py's models, batch `settings.UNET_BATCH`) with the ResnetBlocks'
dropout on ATen ("aten": `dropout_act` swapped for the module's own call) or on the op
("ebsparse"), all interleaved in one process, the order rotated per round; minimum over rounds.

Run: ``OMP_NUM_THREADS=1 python -m bench.dropout_cpu_time [--rounds 5] [--step-rounds 4]``
(prints markdown tables; bench/NOTES.md keeps the history).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.cpu_time import rotated_min, swapped_step_rows

SHAPES = [(8, 128, 32, 32), (8, 256, 16, 16), (8, 256, 8, 8)]
P = 0.1


def op_rows(rounds: int) -> list[str]:
    from ebsparse.ops import dropout

    rows = ["| shape | ATen F.dropout ms | ebsparse native ms | dense backend (ATen Bernoulli) ms | native speed-up |",
            "| --- | --- | --- | --- | --- |"]
    for shape in SHAPES:
        x = torch.randn(shape, requires_grad=True)
        go = torch.randn(shape)

        def step(run):
            return lambda: torch.autograd.grad(run(x), x, go)

        best = rotated_min({"aten": step(lambda t: F.dropout(t, P, True)),
                             "native": step(lambda t: dropout(t, P, backend="native")),
                             "dense": step(lambda t: dropout(t, P, backend="dense"))}, rounds, repeats=5)
        rows.append(f"| {'x'.join(map(str, shape))} | {best['aten']:.2f} | {best['native']:.2f} | "
                    f"{best['dense']:.2f} | {best['aten'] / best['native']:.1f}x |")
    return rows


def step_rows(rounds: int) -> list[str]:
    from bench.test_unet_step import build, train_step
    from ebsparse.models import ddpm_unet

    steps = {name: train_step(build(name)[0]) for name in ("dense", "erk-0.9")}
    return swapped_step_rows(steps, ddpm_unet, "dropout_act", lambda drop, x: drop(x), "dropout", rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the op rows (5 calls each)")
    parser.add_argument("--step-rounds", type=int, default=4, help="rounds of the U-Net steps (0: skip them)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"p = {P}, forward + backward, 1 thread, CPU ms (minimum over {args.rounds} rounds of 5 calls)\n")
    print("\n".join(op_rows(args.rounds)))
    if args.step_rounds:
        print(f"\nU-Net training step, 1 thread, CPU ms (minimum over {args.step_rounds} rounds)\n")
        print("\n".join(step_rows(args.step_rounds)))


if __name__ == "__main__":
    main()
