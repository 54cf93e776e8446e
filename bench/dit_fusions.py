"""DiT-S/2 training steps with each of the step's cross-op fusions switched off in turn, against the
step with all of them, interleaved round by round in one process (order rotated), with the dense
step beside them for the ratio the DiT bench reports:

- the MLP as one op (`sparse_mlp_gelu_tanh`: fc1, tanh-GELU and fc2 without the (N, hidden)
  activations between them) against fc1 + GELU and fc2 as two ops (ERK 0.9 only: it needs two
  sparse layers);
- the attention's gated add and norm2 as one op (`residual_norm_modulate`) against the two adaLN
  ops (dense and ERK 0.9).

One thread: CPU time (`time.process_time`); more: wall clock (`time.perf_counter`), the machine
being shared.

Run: ``python -m bench.dit_fusions [--threads 1] [--rounds 7]`` (prints a markdown table).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import test_dit_speed as dit
from bench.cpu_time import rotated_min, with_attribute
from ebsparse.models import dit as dit_model
from ebsparse.nn.adaln import gated_add, norm_modulate
from ebsparse.nn.linear import linear_gelu_tanh


def _mlp_two_ops(fc1, act, fc2, x):
    return fc2(linear_gelu_tanh(fc1, act, x))


def _add_then_norm(x, gate, branch, norm, shift, scale, fused):
    out = gated_add(x, gate, branch, fused)
    return out, norm_modulate(norm, out, shift, scale, fused)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    dense = dit._step(dit._model("dense")[0])
    erk = dit._step(dit._model("erk-0.9")[0])
    fns = {"dense": dense,
           "dense, add and norm2 as two ops": with_attribute(dense, dit_model, "gated_add_norm_modulate",
                                                             _add_then_norm),
           "ERK 0.9": erk,
           "ERK 0.9, MLP as two ops": with_attribute(erk, dit_model, "mlp_gelu_tanh", _mlp_two_ops),
           "ERK 0.9, add and norm2 as two ops": with_attribute(erk, dit_model, "gated_add_norm_modulate",
                                                               _add_then_norm)}
    best = rotated_min(fns, args.rounds, clock=clock)
    print(f"DiT-S/2 b{dit.BATCH} training step, {args.threads} thread(s), "
          f"{'CPU' if args.threads == 1 else 'wall'} ms (min of {args.rounds}), "
          f"CPU capability {torch.ops.ebsparse.cpu_capability()}\n")
    print("| step | ms | dense / step |\n|---|---|---|")
    for name, ms in best.items():
        print(f"| {name} | {ms:.1f} | {best['dense'] / ms:.2f}x |")


if __name__ == "__main__":
    main()
