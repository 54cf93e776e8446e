"""Training step of the CIFAR-10 DDPM U-Net, dense vs sparse-to-sparse (CPU, batch 8, forward + backward).

Rows: ``dense`` and ERK masks at sparsity 0.5, 0.75 and 0.9 (the masks Static/RigL/MagRan-DM train
with; a step between mask updates costs the same for all three), every sparse layer on the auto
backend, so each runs whichever of the sparse kernel and dense is faster for its shape and density.
Beside each measured speed-up, the FLOPs ratio the paper would report: test FLOPs f_S/f_D and RigL's
training FLOPs at ΔT = 1100 (Evci et al.). The first call of a sparse model resolves its backends
(measured per layer); it is the warm-up round.

Run: ``pytest bench/test_s2s_speed.py --benchmark`` (EBSPARSE_BENCH_THREADS sets the threads). The
FLOPs table also goes to ``bench/results/s2s_speed.md``. On a shared machine wall-clock ratios are
noisy; measure with one thread and ``--benchmark-timer time.process_time`` there.
"""

from __future__ import annotations

import copy
import functools
import os

import pytest
import torch

BATCH = 8
SPARSITIES = [0.0, 0.5, 0.75, 0.9]
UPDATE_EVERY = 1100
ROWS: dict[str, dict[str, float]] = {}


@functools.cache
def _model(sparsity: float):
    from ebsparse.models import DDPMUNet, DDPMUNetConfig
    from ebsparse.s2s import Static, densities_of, flops_report

    torch.manual_seed(0)
    model = DDPMUNet(DDPMUNetConfig())
    with torch.device("meta"):
        meta_model = DDPMUNet(DDPMUNetConfig())
    inputs = (torch.zeros(1, 3, 32, 32, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    if sparsity == 0:
        report = flops_report(meta_model, inputs, {})
        return model, report
    sp = Static(sparsity=sparsity, distribution="erk")
    sp.apply(model)
    return model, flops_report(meta_model, inputs, densities_of(sp.masks()))


def _train_step(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    eps = torch.randn(BATCH, 3, 32, 32, generator=g)
    model = copy.deepcopy(model).train()

    def step():
        model.zero_grad(set_to_none=True)
        loss = torch.mean((model(x, t) - eps) ** 2)
        loss.backward()

    return step


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"sparsity={s}")
def test_unet_cifar10_s2s_train_step(benchmark, record, sparsity):
    model, report = _model(sparsity)
    step = _train_step(model)
    benchmark.group = "cifar10 U-Net s2s train step, batch 8"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    seconds = benchmark.stats.stats.min
    provider = "dense" if sparsity == 0 else f"erk-{sparsity}"
    gflop = 3 * report.sparse_forward * BATCH / 1e9
    record("cifar10 U-Net s2s train step b8", provider, seconds, gflop)
    ROWS[provider] = {"seconds": seconds, "test": report.test_ratio,
                      "train_rigl": report.train_ratio("rigl", UPDATE_EVERY),
                      "train_static": report.train_ratio("static")}
    if "dense" in ROWS:
        dense = ROWS["dense"]["seconds"]
        lines = ["| provider | ms | measured speed-up | test FLOPs | train FLOPs (Static/MagRan) | "
                 f"train FLOPs (RigL, ΔT={UPDATE_EVERY}) |", "|---|---|---|---|---|---|"]
        for name, r in ROWS.items():
            lines.append(f"| {name} | {r['seconds'] * 1e3:.0f} | {dense / r['seconds']:.2f}x | {r['test']:.3f} | "
                         f"{r['train_static']:.3f} | {r['train_rigl']:.3f} |")
        header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, CPU"
        out = os.path.join(os.path.dirname(__file__), "results", "s2s_speed.md")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(f"{header}\n\n" + "\n".join(lines) + "\n")
