"""qkv_attention by CPU time: the native kernel against the dense path (unbind, transpose, SDPA,
transpose back: what DiT's Attention ran before), forward + backward, interleaved in one process,
the order rotated per round; minimum over rounds.

Rows: the op alone and DiT-S/2's whole Attention layer (qkv linear, attention, proj) at the DiT
bench's shapes (batch 32, 64 tokens, 6 heads of 64), then a token sweep at a fixed 2,048 tokens per
call that places auto's `NATIVE_MAX_TOKENS`; with ``--steps``, whole DiT-S/2 training steps (dense
and ERK 0.9) with the attention on each backend. With one thread the times are `time.process_time`;
with more, wall-clock (`time.perf_counter`), the machine being shared.

``--against REV`` instead compares this build's kernel with revision REV's (its attention sources
compiled under another op namespace by bench.compare_builds): the forward and backward ops alone
at DiT-S/2's shape and, with ``--steps``, the dense and ERK 0.9 DiT-S/2 steps with the attention on
either build, all interleaved; min ms of each and the median of the per-round ratios (this / REV).

Run: ``OMP_NUM_THREADS=1 python -m bench.qkv_attention_cpu_time [--threads 1] [--rounds 5] [--steps]
[--against REV]``
(prints markdown tables; bench/NOTES.md keeps the history).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.cpu_time import rotated_min, rotated_times, with_attribute

HEADS, HEAD_DIM = 6, 64


def _op_step(qkv, go, backend):
    from ebsparse.ops import qkv_attention

    return lambda: torch.autograd.grad(qkv_attention(qkv, HEADS, backend=backend), qkv, go)


def _layer_step(backend, batch=32, tokens=64):
    from ebsparse.models import dit

    attn = dit.Attention(HEADS * HEAD_DIM, HEADS)
    x = torch.randn(batch, tokens, HEADS * HEAD_DIM, requires_grad=True)
    params = [x, *attn.parameters()]

    return _with_attention(lambda: torch.autograd.grad(attn(x).sum(), params), backend)


def rows(rounds: int, clock) -> list[str]:
    out = ["| case | dense (unbind + SDPA) ms | native ms | native speed-up |", "| --- | --- | --- | --- |"]
    cases = [("op, B=32 N=64", 32, 64), *((f"op, B={2048 // n} N={n}", 2048 // n, n) for n in (128, 256, 512, 1024))]
    for label, b, n in cases:
        qkv = torch.randn(b, n, 3 * HEADS * HEAD_DIM, requires_grad=True)
        go = torch.randn(b, n, HEADS * HEAD_DIM)
        repeats = 5 if n <= 256 else 2
        best = rotated_min({"dense": _op_step(qkv, go, "dense"), "native": _op_step(qkv, go, "native")},
                            rounds, repeats, clock)
        out.append(f"| {label} | {best['dense']:.2f} | {best['native']:.2f} | {best['dense'] / best['native']:.2f}x |")
        if n == 64:
            best = rotated_min({"dense": _layer_step("dense"), "native": _layer_step("native")}, rounds, 5, clock)
            out.append(f"| DiT-S/2 Attention layer (qkv, attention, proj), B=32 N=64 | {best['dense']:.2f} | "
                       f"{best['native']:.2f} | {best['dense'] / best['native']:.2f}x |")
    return out


def _with_attention(step, backend):
    """`step` with our DiT's attention on `backend`."""
    from ebsparse.models import dit
    from ebsparse.ops.qkv_attention import qkv_attention

    return with_attribute(step, dit, "qkv_attention",
                          lambda qkv, heads: qkv_attention(qkv, heads, backend=backend))


def step_rows(rounds: int, clock) -> list[str]:
    """Whole DiT-S/2 training steps (bench/test_dit_speed.py's dense and ERK 0.9 models) with the
    attention on each backend, all interleaved."""
    from bench import test_dit_speed as dit_bench

    fns = {}
    for name in ("dense", "erk-0.9"):
        step = dit_bench._step(dit_bench._model(name)[0])
        for backend in ("dense", "native"):
            fns[(name, backend)] = _with_attention(step, backend)
    best = rotated_min(fns, rounds, 1, clock)
    out = ["| model | attention on dense (SDPA) ms | attention on native ms | step speed-up | dense model / model "
           "(SDPA) | dense model / model (native) |", "| --- | --- | --- | --- | --- | --- |"]
    for name in ("dense", "erk-0.9"):
        sdpa, native = best[(name, "dense")], best[(name, "native")]
        out.append(f"| {name} | {sdpa:.0f} | {native:.0f} | {sdpa / native:.3f}x | "
                   f"{best[('dense', 'dense')] / sdpa:.2f}x | {best[('dense', 'native')] / native:.2f}x |")
    return out


def _saves_probs(ops) -> bool:
    """Whether `ops` (a build's namespace) has the forward that may keep P (3 outputs) and the
    backward that takes it; older revisions return (out, lse) only."""
    return len(ops.qkv_attention.default._schema.returns) == 3


def _ops_forward(ops, qkv, heads, scale, save_probs):
    """(out, saved) of `ops`' forward; saved is what its backward takes after lse."""
    if _saves_probs(ops):
        out, lse, probs = ops.qkv_attention(qkv, heads, scale, save_probs)
        return out, (lse, probs)
    out, lse = ops.qkv_attention(qkv, heads, scale)
    return out, (lse,)


def _ops_backward(ops, go, qkv, saved, heads, scale):
    return ops.qkv_attention_backward(go, qkv, *saved, heads, scale)


class _OpsAttention(torch.autograd.Function):
    """qkv_attention through one build's ops namespace (ours or another revision's)."""

    @staticmethod
    def forward(ctx, qkv, heads, ops):
        scale = (qkv.shape[2] // (3 * heads)) ** -0.5
        out, saved = _ops_forward(ops, qkv, heads, scale, True)
        ctx.save_for_backward(qkv, *saved)
        ctx.heads, ctx.scale, ctx.ops = heads, scale, ops
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, *saved = ctx.saved_tensors
        return _ops_backward(ctx.ops, grad_out.contiguous(), qkv, saved, ctx.heads, ctx.scale), None, None


def _ratio_cells(times: dict, ours, theirs) -> str:
    ratios = [a / b for a, b in zip(times[ours], times[theirs])]
    return (f"{min(times[theirs]):.2f} | {min(times[ours]):.2f} | {statistics.median(ratios):.3f} "
            f"[{min(ratios):.2f}, {max(ratios):.2f}]")


def against_rows(rev: str, rounds: int, clock, steps: bool) -> list[str]:
    """This build's qkv_attention ops against `rev`'s, interleaved (see the module docstring)."""
    from bench.compare_builds import load_revision

    theirs = load_revision(rev, only=("cpu/attention/qkv_attention*.cpp", "cpu/capability.cpp"))
    ours = torch.ops.ebsparse
    qkv = torch.randn(32, 64, 3 * HEADS * HEAD_DIM)
    go = torch.randn(32, 64, HEADS * HEAD_DIM)
    scale = HEAD_DIM ** -0.5
    fns = {}
    for name, ops in (("ours", ours), ("theirs", theirs)):
        saved = _ops_forward(ops, qkv, HEADS, scale, True)[1]
        # The forward as training runs it (keeping P where this build does), the backward on its output.
        fns[("forward", name)] = lambda ops=ops: _ops_forward(ops, qkv, HEADS, scale, True)
        fns[("backward", name)] = lambda ops=ops, saved=saved: _ops_backward(ops, go, qkv, saved, HEADS, scale)
    times = rotated_times(fns, rounds, 5, clock)
    out = [f"| case | {rev} ms | this build ms | this / {rev}: median [min, max] of paired rounds |",
           "| --- | --- | --- | --- |"]
    for phase in ("forward", "backward"):
        out.append(f"| op {phase}, B=32 N=64 H=6 D=64 | " + _ratio_cells(times, (phase, "ours"), (phase, "theirs")) + " |")
    if steps:
        from bench import test_dit_speed as dit_bench
        from ebsparse.models import dit

        fns = {}
        for model in ("dense", "erk-0.9"):
            step = dit_bench._step(dit_bench._model(model)[0])
            for name, ops in (("ours", ours), ("theirs", theirs)):
                fns[(model, name)] = with_attribute(step, dit, "qkv_attention",
                                                    lambda qkv, heads, ops=ops: _OpsAttention.apply(qkv, heads, ops))
        times = rotated_times(fns, rounds, 1, clock)
        for model in ("dense", "erk-0.9"):
            out.append(f"| DiT-S/2 {model} step | " + _ratio_cells(times, (model, "ours"), (model, "theirs")) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", action="store_true", help="also whole DiT-S/2 training steps")
    parser.add_argument("--against", metavar="REV", help="compare this build's kernel with revision REV's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"threads={args.threads} ({'process_time' if args.threads == 1 else 'wall-clock'}), "
          f"forward + backward, min of {args.rounds} rounds\n")
    if args.against:
        print("\n".join(against_rows(args.against, args.rounds, clock, args.steps)), flush=True)
        return
    print("\n".join(rows(args.rounds, clock)))
    if args.steps:
        print()
        print("\n".join(step_rows(args.rounds, clock)), flush=True)


if __name__ == "__main__":
    main()
