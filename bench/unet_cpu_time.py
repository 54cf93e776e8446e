"""The channel-pruned U-Net steps against dense by CPU time (`time.process_time`), and where the
pruned steps lose: each model's convolutions by layer shape. One thread (CPU time of several
threads would add their spinning); a shared, overloaded machine distorts CPU time far less than
wall-clock time. Models and steps are bench/test_unet_step.py's (batch 8, forward + backward).

Two tables:
- steps: each model's training step, all models interleaved (order rotated per round), minimum and
  median over the rounds, the speed-up against dense's minimum, the models' summed convolution time
  (from the shapes table) and the rest of the step (norms, attention products, elementwise work,
  autograd), so the ratio each part would allow can be read off;
- shapes: every distinct convolution of each model (input shape, weight shape, stride): how many the
  step runs, forward + backward of one (F.conv2d on NCHW tensors, as the models run them) and,
  with ``--channels-last``, of the same conv on channels-last tensors (no conversions counted), in
  interleaved rounds, with GFLOP/s (3 x 2 x MACs per forward + backward).

Run: ``OMP_NUM_THREADS=1 python -m bench.unet_cpu_time [--rounds N] [--models dense,pruned-0.5]
[--channels-last]`` (prints markdown tables; EBSPARSE_BENCH_QUICK=1 shrinks the U-Net to check it runs).
"""

from __future__ import annotations

import argparse
import collections
import statistics

import torch
import torch.nn.functional as F

from bench import test_unet_step as unet
from bench.cpu_time import rotated_times

MODELS = ["dense", "pruned-0.5", "pruned-0.3"]
ROUNDS = 7
SHAPE_ROUNDS = 7

#: (input shape, weight shape, stride, padding) of one convolution call
ConvCall = tuple[tuple[int, ...], tuple[int, ...], tuple[int, int], tuple[int, int]]


def conv_calls(model) -> collections.Counter:
    """The convolutions one training step of `model` runs, counted by ConvCall (forward hooks)."""
    seen: collections.Counter = collections.Counter()

    def hook(module, inputs, output):
        seen[(tuple(inputs[0].shape), tuple(module.weight.shape), module.stride, module.padding)] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        unet.train_step(model)()
    finally:
        for h in handles:
            h.remove()
    return seen


def conv_step(call: ConvCall, channels_last: bool):
    """Forward + backward of one convolution (input, weight and bias gradients)."""
    x_shape, w_shape, stride, padding = call
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(w_shape, generator=g).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(w_shape[0], generator=g).requires_grad_()
    dy = torch.randn(F.conv2d(x.detach(), w.detach(), None, stride, padding).shape,
                     generator=g).contiguous(memory_format=fmt)

    def step():
        F.conv2d(x, w, b, stride, padding).backward(dy)
        x.grad = w.grad = b.grad = None

    return step


def conv_gflop(call: ConvCall) -> float:
    """GFLOP of forward + backward (3 products of 2 x MACs)."""
    x_shape, w_shape, stride, padding = call
    out = [(x_shape[i] + 2 * padding[i - 2] - w_shape[i]) // stride[i - 2] + 1 for i in (2, 3)]
    return 6 * x_shape[0] * w_shape[0] * w_shape[1] * w_shape[2] * w_shape[3] * out[0] * out[1] / 1e9


def shapes_table(calls: dict[str, collections.Counter], rounds: int, channels_last: bool
                 ) -> tuple[str, dict[str, float]]:
    """Markdown table of every model's convolutions by shape, and each model's summed NCHW conv ms."""
    extra = " channels-last ms | GFLOP/s | CL/NCHW |" if channels_last else ""
    lines = [f"| model | input | weight | stride | calls | NCHW ms | GFLOP/s | x calls ms |{extra}",
             "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if channels_last else "")]
    print("\n".join(lines), flush=True)  # the rows follow as they are measured
    totals = {}
    for model, counter in calls.items():
        rows = []
        for call, count in counter.items():
            fns = {"nchw": conv_step(call, False)}
            if channels_last:
                fns["cl"] = conv_step(call, True)
            best = {k: min(v) for k, v in rotated_times(fns, rounds).items()}
            rows.append((count * best["nchw"], call, count, best))
        rows.sort(key=lambda r: -r[0])
        totals[model] = sum(r[0] for r in rows)
        for total, call, count, best in rows:
            gf = conv_gflop(call)
            row = (f"| {model} | {call[0]} | {call[1]} | {call[2][0]} | {count} | {best['nchw']:.2f} | "
                   f"{1e3 * gf / best['nchw']:.0f} | {total:.1f} |")
            if channels_last:
                row += f" {best['cl']:.2f} | {1e3 * gf / best['cl']:.0f} | {best['cl'] / best['nchw']:.2f} |"
            lines.append(row)
            print(row, flush=True)
    return "\n".join(lines), totals


def steps_table(models: list[str], rounds: int, conv_ms: dict[str, float]) -> str:
    steps = {name: unet.train_step(unet.build(name)[0]) for name in models}
    times = rotated_times(steps, rounds)
    base = min(times["dense"]) if "dense" in times else None
    lines = [f"| model | min ms | median ms | speed-up (min) | FLOP bound | convs ms (sum of shapes) | rest ms |",
             "|---|---|---|---|---|---|---|"]
    for name, t in times.items():
        best = min(t)
        speed = f"{base / best:.2f}x" if base else ""
        bound = 1 / unet.build(name)[1]
        conv = conv_ms.get(name)
        conv_cells = f"{conv:.0f} | {best - conv:.0f}" if conv is not None else " | "
        lines.append(f"| {name} | {best:.0f} | {statistics.median(t):.0f} | {speed} | {bound:.2f}x | {conv_cells} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (dense is the baseline; the ERK models' "
                             "sparse convs are not F.conv2d, so they are not offered)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds of the steps")
    parser.add_argument("--shape-rounds", type=int, default=SHAPE_ROUNDS, help="interleaved rounds per conv shape")
    parser.add_argument("--channels-last", action="store_true", help="time every conv shape channels-last too")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: unknown {unknown or models}; expected some of {MODELS}")
    torch.set_num_threads(1)
    print(f"CPU time, 1 thread, CPU capability {torch.backends.cpu.get_cpu_capability()}, batch {unet.BATCH}\n")
    calls = {name: conv_calls(unet.build(name)[0]) for name in models}
    shapes, conv_ms = shapes_table(calls, args.shape_rounds, args.channels_last)
    print("\n" + steps_table(models, args.rounds, conv_ms))


if __name__ == "__main__":
    main()
