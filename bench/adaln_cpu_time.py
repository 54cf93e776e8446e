"""DiT's adaLN ops by 1-thread CPU time (`time.process_time`): `layer_norm_modulate` and
`gated_residual` (native kernel, dense backend) against ATen's composition as DiT wrote it, forward
+ backward at DiT-S/2's block shape (batch 32, 64 tokens, 384 channels), and the DiT-S/2 training
step (dense and ERK 0.9, bench/test_dit_speed.py's models) with its blocks on ATen's composition
("aten": `fused_adaln` answering no) or on the ops ("ebsparse"), all interleaved in one process, the
order rotated per round; minimum over rounds.

The op rows run on tensors that stay in cache between calls; in the model the activations come
from DRAM, where each pass saved costs more (the step rows are the figure that counts).

Run: ``OMP_NUM_THREADS=1 python -m bench.adaln_cpu_time [--rounds 5] [--step-rounds 4]``
(prints markdown tables; bench/NOTES.md keeps the history).
"""

from __future__ import annotations

import argparse

import torch

from bench.cpu_time import rotated_min, swapped_step_rows

import ebsparse  # noqa: F401  (loads the extension and its ops)

SHAPE = (32, 64, 384)


def op_rows(rounds: int) -> list[str]:
    from ebsparse.ops import (gated_residual, gated_residual_reference, layer_norm_modulate,
                              layer_norm_modulate_reference)

    b, n, c = SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).requires_grad_()
    branch = torch.randn(SHAPE, generator=g).requires_grad_()
    ada = torch.randn(b, 6 * c, generator=g).requires_grad_()  # shift, scale, gate as DiT's chunks
    shift, scale, gate = ada[:, :c], ada[:, c:2 * c], ada[:, 2 * c:3 * c]
    dy = torch.randn(SHAPE, generator=g)

    def step(fn, args, wrt):
        return lambda: torch.autograd.grad(fn(*args), wrt, dy)

    rows = ["| op (32x64x384) | ATen composition ms | ebsparse native ms | dense backend ms | native speed-up |",
            "| --- | --- | --- | --- | --- |"]
    cases = {
        "layer_norm_modulate": (lambda *a: layer_norm_modulate_reference(*a, 1e-6),
                                lambda be: lambda *a: layer_norm_modulate(*a, 1e-6, backend=be), (x, shift, scale),
                                (x, ada)),
        "gated_residual": (gated_residual_reference, lambda be: lambda *a: gated_residual(*a, backend=be),
                           (x, gate, branch), (x, ada, branch)),
    }
    for name, (aten, ours, args, wrt) in cases.items():
        best = rotated_min({"aten": step(aten, args, wrt), "native": step(ours("native"), args, wrt),
                             "dense": step(ours("dense"), args, wrt)}, rounds, repeats=5)
        rows.append(f"| {name} | {best['aten']:.2f} | {best['native']:.2f} | {best['dense']:.2f} | "
                    f"{best['aten'] / best['native']:.2f}x |")
    return rows


def step_rows(rounds: int) -> list[str]:
    from bench import test_dit_speed as dit
    from ebsparse.models import dit as dit_model

    steps = {name: dit._step(dit._model(name)[0]) for name in ("dense", "erk-0.9")}
    return swapped_step_rows(steps, dit_model, "fused_adaln", lambda *args: False, "adaLN", rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the op rows (5 calls each)")
    parser.add_argument("--step-rounds", type=int, default=4, help="rounds of the DiT steps (0: skip them)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"forward + backward, 1 thread, CPU ms (minimum over {args.rounds} rounds of 5 calls), "
          f"CPU capability {torch.ops.ebsparse.cpu_capability()}\n")
    print("\n".join(op_rows(args.rounds)))
    if args.step_rounds:
        print(f"\nDiT-S/2 training step b32, 1 thread, CPU ms (minimum over {args.step_rounds} rounds)\n")
        print("\n".join(step_rows(args.step_rounds)))


if __name__ == "__main__":
    main()
