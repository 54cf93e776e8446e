"""DiT-S/2 ERK 0.9 training step with the MLP's fc1 + tanh-GELU fused (`sparse_linear_gelu_tanh`)
against the same model running them as two ops (`SparseLinear` then `gelu_tanh`), by CPU time
(`time.process_time`, one thread), interleaved round by round in one process so that the shared
machine's noise hits both alike; minimum over the rounds. Also the fc1 + GELU pair of block 0
alone (forward, and backward with the bias gradient), fused kernels against the unfused ones.

Run: ``OMP_NUM_THREADS=1 python -m bench.dit_gelu_fusion [--rounds N]`` (prints a markdown table).
"""

from __future__ import annotations

import argparse

import torch

from bench import test_dit_speed as dit
from bench.cpu_time import rotated_min
from ebsparse.formats import build_index
from ebsparse.models import dit as dit_model
from ebsparse.nn.activation import gelu_tanh_act


def _unfused(fc1, act, x):
    return gelu_tanh_act(act, fc1(x))


def _step(model, fused: bool):
    step = dit._step(model)

    def run():
        saved = dit_model.linear_gelu_tanh
        if not fused:
            dit_model.linear_gelu_tanh = _unfused
        try:
            step()
        finally:
            dit_model.linear_gelu_tanh = saved

    return run


def _pair_calls(fc1):
    """(fused, unfused) callables of block 0's fc1 + GELU on the native kernels: forward, backward."""
    ops = torch.ops.ebsparse
    w, b, mask = fc1.weight.detach(), fc1.bias.detach(), fc1.mask
    rp, ci, _, _ = build_index(mask).tensors()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(dit.BATCH * 64, w.shape[1], generator=g)
    grad = torch.randn(dit.BATCH * 64, w.shape[0], generator=g)
    pre = ops.csr_linear(x, w, b, rp, ci)
    calls = {
        "fc1+gelu forward fused": lambda: ops.csr_linear_gelu_tanh(x, w, b, rp, ci),
        "fc1+gelu forward unfused": lambda: ops.gelu_tanh(ops.csr_linear(x, w, b, rp, ci)),
        "fc1+gelu backward fused": lambda: ops.csr_linear_gelu_tanh_backward(grad, pre, x, w, rp, ci, True, True, True),
    }

    def unfused_backward():
        dh = ops.gelu_tanh_backward(grad, pre)
        dh.sum(0)
        ops.csr_linear_backward(dh, x, w, rp, ci, True, True)

    calls["fc1+gelu backward unfused"] = unfused_backward
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = dit._model("erk-0.9")
    fns = {"ERK 0.9 step fused": _step(model, True), "ERK 0.9 step unfused": _step(model, False)}
    fns.update(_pair_calls(model.blocks[0].mlp.fc1))
    best = rotated_min(fns, args.rounds)
    print(f"DiT-S/2 b{dit.BATCH}, 1 thread, CPU time (min of {args.rounds}), "
          f"CPU capability {torch.ops.ebsparse.cpu_capability()}\n")
    print("| call | CPU ms |\n|---|---|")
    for name, ms in best.items():
        print(f"| {name} | {ms:.1f} |")
    print(f"\nstep: fused saves {best['ERK 0.9 step unfused'] - best['ERK 0.9 step fused']:.1f} ms "
          f"({best['ERK 0.9 step unfused'] / best['ERK 0.9 step fused']:.3f}x)")


if __name__ == "__main__":
    main()
