"""DiT-S/2 training steps (bench/test_dit_speed.py's models) and their sparse linears by CPU time
(`time.process_time`), interleaved in one process: a figure that a shared, overloaded machine does
not distort the way wall-clock time is. One thread (CPU time of several threads would add their
spinning). Minimum over the rounds.

Two tables:
- layers: each linear of a DiT block at the ERK 0.9 model's own masks (block 0's; 2048 token rows,
  the adaLN linear 32 sample rows): the native forward and both gradients against F.linear and the
  two matmuls of the dense backward on the masked weight, each with the bias gradient's sum;
- steps: forward + backward of the whole model, each model against the dense step.

With ``--against REV``, REV's C++ kernels (compiled by bench.compare_builds.load_revision under
their own op namespace) run the same layers and, in the steps table, a copy of the ERK model whose
native linears call them, all in the same rounds; the Python side is this tree's for both.

Run: ``OMP_NUM_THREADS=1 python -m bench.dit_cpu_time [--against REV] [--rounds N] [--skip-layers | --skip-steps]``
(prints markdown tables).
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from bench import test_dit_speed as dit
from bench.cpu_time import rotated_min
from ebsparse.backends.native import NativeBackend
from ebsparse.formats import build_index

ROUNDS = 7
LAYER_ROUNDS = 25
STEP_MODELS = ["dense", "erk-0.9", "pruned-0.5-all"]
LAYERS = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"]


class _OtherBuild(NativeBackend):
    """The native backend with another build's linear kernels (an op namespace of the same schemas)."""

    name = "native (other build)"

    def __init__(self, ops):
        self.ops = ops

    def linear_forward(self, inputs):
        p = inputs.pattern
        return self.ops.csr_linear(inputs.input, inputs.weight, inputs.bias, p.row_ptr, p.col_idx)

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        p = inputs.pattern
        grad_input, grad_weight, _ = self.ops.csr_linear_backward(grad_output, inputs.input, inputs.weight, p.row_ptr,
                                                               p.col_idx, input_grad, weight_grad)
        return grad_input if input_grad else None, grad_weight if weight_grad else None


def _step_on_other_build(model, ops):
    """The training step of a copy of `model` whose layers resolved to native run `ops`' linear
    kernels. The copy's first step resolves its layers (a copied mask gets its own pattern index,
    which clears what the original had resolved); the swap follows, and a traced step checks it."""
    from ebsparse import backends

    other = copy.deepcopy(model)
    step = dit._step(other)
    backend = _OtherBuild(ops)
    for module in other.modules():
        resolved = getattr(module, "_resolved", None)
        if resolved:
            for key, chosen in resolved.items():
                if chosen.name == "native":
                    resolved[key] = backend
    with backends.trace() as calls:
        step()
    if not any(name == backend.name for op, _, name in calls if op == "linear"):
        raise RuntimeError("no linear ran on the other build's kernels")
    return step


def layer_calls(linear, rows: int, ops=None):
    """(sparse step, dense step) of one SparseLinear's weight and mask at `rows` input rows: the
    kernels alone (forward, then both gradients), no autograd."""
    ops = ops or torch.ops.ebsparse
    g = torch.Generator().manual_seed(0)
    mask = linear.mask
    w = (torch.randn(mask.shape, generator=g) * mask).contiguous()
    b = torch.randn(mask.shape[0], generator=g)
    x = torch.randn(rows, mask.shape[1], generator=g)
    dy = torch.randn(rows, mask.shape[0], generator=g)
    rp, ci, _, _ = build_index(mask).tensors()

    def sparse():
        ops.csr_linear(x, w, b, rp, ci)
        ops.csr_linear_backward(dy, x, w, rp, ci, True, True)
        dy.sum(0)

    def dense():
        F.linear(x, w, b)
        dy.mm(w)
        dy.t().mm(x)
        dy.sum(0)

    return sparse, dense


def layers_table(model, rounds: int, other=None, against: str | None = None) -> str:
    extra = f" {against} ms | {against} speed-up |" if other else ""
    lines = ["| layer (block 0) | rows | density | native ms | dense ms | speed-up |" + extra,
             "|---|---|---|---|---|---|" + ("---|---|" if other else "")]
    print("\n".join(lines), flush=True)  # the rows follow as they are measured
    block = model.blocks[0]
    for name in LAYERS:
        linear = block.get_submodule(name)
        rows = dit.BATCH if name.startswith("adaLN") else dit.BATCH * 64
        sparse, dense = layer_calls(linear, rows)
        fns = {"sparse": sparse, "dense": dense}
        if other:
            fns["other"] = layer_calls(linear, rows, other)[0]
        t = rotated_min(fns, rounds)
        row = (f"| {name} {tuple(linear.mask.shape)} | {rows} | {linear.density:.3f} | {t['sparse']:.2f} | "
               f"{t['dense']:.2f} | {t['dense'] / t['sparse']:.2f}x |")
        if other:
            row += f" {t['other']:.2f} | {t['dense'] / t['other']:.2f}x |"
        lines.append(row)
        print(row, flush=True)
    return "\n".join(lines)


def steps_table(rounds: int, other=None, against: str | None = None) -> str:
    models = {name: dit._model(name)[0] for name in STEP_MODELS}
    steps = {name: dit._step(model) for name, model in models.items()}
    if other:
        steps[f"erk-0.9 on {against}"] = _step_on_other_build(models["erk-0.9"], other)
    t = rotated_min(steps, rounds)
    lines = ["| model | CPU ms (min) | dense / model |", "|---|---|---|"]
    for name, ms in t.items():
        lines.append(f"| {name} | {ms:.0f} | {t['dense'] / ms:.2f}x |")
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="git revision whose linear kernels are timed alongside")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of the steps table")
    parser.add_argument("--layer-rounds", type=int, default=LAYER_ROUNDS)
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-steps", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    other = None
    if args.against:
        from bench.compare_builds import load_revision
        other = load_revision(args.against)
    print(f"DiT-S/2 b{dit.BATCH}, 1 thread, CPU time, CPU capability {torch.ops.ebsparse.cpu_capability()}\n",
          flush=True)
    if not args.skip_layers:
        layers_table(dit._model("erk-0.9")[0], args.layer_rounds, other, args.against)
        print()
    if not args.skip_steps:
        steps_table(args.rounds, other, args.against)


if __name__ == "__main__":
    main()
