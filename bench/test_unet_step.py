"""CIFAR-10 DDPM U-Net training step, every model of issue 19 interleaved in one process, with a
breakdown of where each step's time goes.

Models: ``dense``; ERK masks at sparsity 0.5, 0.75 and 0.9 (Static/RigL/MagRan between mask
updates: a step costs the same for all three), every sparse layer on the auto backend;
channel-pruned at 0.5 and 0.3 (magnitude, the reference's per-group rule). Batch
`settings.UNET_BATCH`, forward + backward (mean squared error), `settings.threads()` threads.

Every round runs each model's step once, in an order rotated by one model per round, so a noisy
stretch of a shared machine hits every model alike; the first call of each model (resolving its
backends) is not timed. Rows give the minimum and the median over the rounds and the speed-up
against dense's minimum (the median's too, in the notes). pytest-benchmark times the whole round
(its JSON carries every model's times in `extra_info`).

After the rounds, one profiled step per model is split by category (bench/breakdown.py) into
`unet_step_breakdown.md` and `unet_step_breakdown.png` in the results folder; the markdown also says
what each model's goal (GOALS) asks of its convolutions' FLOP rate against the dense model's.

Run: ``pytest bench/test_unet_step.py --benchmark`` (EBSPARSE_BENCH_ROUNDS, default 7).
"""

from __future__ import annotations

import copy
import functools
import statistics
import time

import torch

from bench import breakdown, settings
from bench.timing import ROWS, Row, paired_speedup_median

BATCH = settings.UNET_BATCH
ROUNDS = 7
MODELS = ["dense", "erk-0.5", "erk-0.75", "erk-0.9", "pruned-0.5", "pruned-0.3"]
# Issue 19's speed-up goals for the models' steps (breakdown.goal_table says what each asks of the kernels).
GOALS = {"erk-0.5": 1.4, "erk-0.75": 2.6, "erk-0.9": 4.0, "pruned-0.5": 3.6, "pruned-0.3": 1.8}


def _config():
    from ebsparse.models import DDPMUNetConfig

    return DDPMUNetConfig(ch=settings.UNET_CHANNELS, num_groups=settings.UNET_NORM_GROUPS)


def _meta_inputs():
    return torch.zeros(1, 3, 32, 32, device="meta"), torch.zeros(1, dtype=torch.long, device="meta")


def _macs(model) -> float:
    from ebsparse.metrics.counting import count_macs

    return float(count_macs(copy.deepcopy(model).to("meta"), *_meta_inputs()).macs)


def _weight_flops(model) -> float:
    """Forward FLOPs of the model's conv / linear weights, dense (what pruning and sparsity shrink)."""
    from ebsparse.s2s import flops_report

    return flops_report(copy.deepcopy(model).to("meta"), _meta_inputs(), {}).dense_weights


@functools.cache
def _built(name: str):
    """(model in train mode, forward-FLOP fraction of dense, its conv / linear weight FLOPs over dense's)."""
    from ebsparse.models import DDPMUNet

    torch.manual_seed(0)
    model = DDPMUNet(_config()).train()
    if name.startswith("erk-"):
        from ebsparse.s2s import Static, densities_of, flops_report

        with torch.device("meta"):
            meta_model = DDPMUNet(_config())
        sp = Static(sparsity=float(name[4:]), distribution="erk")
        sp.apply(model)
        report = flops_report(meta_model, _meta_inputs(), densities_of(sp.masks()))
        return model, report.test_ratio, report.weight_ratio
    if name.startswith("pruned-"):
        from ebsparse.pruning import PruningConfig, prune

        dense_macs, dense_weights = _macs(model), _weight_flops(model)
        inputs = (torch.randn(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
        model = prune(model, inputs, PruningConfig(pruning_ratio=float(name[7:]))).model.train()
        return model, _macs(model) / dense_macs, _weight_flops(model) / dense_weights
    return model, 1.0, 1.0


def build(name: str):
    """(model in train mode, forward-FLOP fraction of dense) for one of MODELS."""
    return _built(name)[:2]


def weight_fraction(name: str) -> float:
    """The forward FLOPs of the model's conv / linear weights over the dense model's: the kernels'
    work, without the attention products and norms that sparsity and pruning leave (or halve)."""
    return _built(name)[2]


def train_step(model):
    """One forward + backward of `model` on a fixed batch (gradients set to None first)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    eps = torch.randn(BATCH, 3, 32, 32, generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        torch.mean((model(x, t) - eps) ** 2).backward()

    return step


def round_robin(steps: dict, rounds: int, benchmark=None) -> dict[str, list[float]]:
    """Seconds of every step in each of `rounds` rounds, the order rotated by one per round."""
    names = list(steps)
    times = {name: [] for name in names}

    def one_round():
        k = len(times[names[0]]) % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)

    if benchmark is None:
        for _ in range(rounds):
            one_round()
    else:
        benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=0, iterations=1)
    return times


def record(group: str, times: dict[str, list[float]], bounds: dict[str, float], gflop: dict[str, float]) -> None:
    """Rows (min and median against dense's) for the summary table."""
    dense_min, dense_median = min(times["dense"]), statistics.median(times["dense"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        ROWS.append(Row(group, name, min(seconds), "dense", dense_min, gflop[name], {
            "rounds": len(seconds), "median_ms": 1e3 * median, "dense_median_ms": 1e3 * dense_median,
            "speedup_median": dense_median / median, "speedup_paired_median": paired_speedup_median(times["dense"], seconds),
            "spread_median_over_min": median / min(seconds),
            "flop_bound": 1 / bounds[name]}))


def test_unet_cifar10_step_all_models(benchmark):
    models = {name: build(name) for name in MODELS}
    steps = {name: train_step(model) for name, (model, _) in models.items()}
    for step in steps.values():
        step()  # resolves every sparse layer's backend (timed per layer by auto)
    rounds = settings.rounds(ROUNDS)
    benchmark.group = f"cifar10 U-Net train step b{BATCH}, all models round-robin"
    times = round_robin(steps, rounds, benchmark)
    if benchmark.stats is None:  # --benchmark-disable
        return
    dense_gflop = 3 * 2 * _macs(models["dense"][0]) * BATCH / 1e9
    record(benchmark.group, times, {n: b for n, (_, b) in models.items()},
           {n: dense_gflop * b for n, (_, b) in models.items()})
    benchmark.extra_info.update({f"{n}_ms": [1e3 * s for s in v] for n, v in times.items()})

    profiles = {name: breakdown.profile_step(step) for name, step in steps.items()}
    timed = {name: min(v) for name, v in times.items()}
    header = (f"CIFAR-10 DDPM U-Net train step (forward + backward), batch {BATCH}, "
              f"{torch.get_num_threads()} threads, {rounds} round-robin rounds; one profiled step per model")
    out = settings.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    goals = breakdown.goal_table(profiles, {n: weight_fraction(n) for n in models}, GOALS)
    text = f"{header}\n\n{breakdown.table(profiles, timed)}\n\nWhat the goals ask of the convolutions\n\n{goals}\n"
    (out / "unet_step_breakdown.md").write_text(text)
    breakdown.stacked_bars(profiles, out / "unet_step_breakdown.png", header)
    print(f"\n{text}")
