"""Training step of the CIFAR-10 DDPM U-Net, dense vs sparse-to-sparse (CPU, batch 8, forward + backward).

Rows: ``dense`` and ERK masks at sparsity 0.5, 0.75 and 0.9 (the masks Static/RigL/MagRan-DM train
with; a step between mask updates costs the same for all three), every sparse layer on the auto
backend, so each runs whichever of the sparse kernel and dense is faster for its shape and density.
Beside each measured speed-up, the FLOPs ratio the paper would report: test FLOPs f_S/f_D and the
training FLOPs of Static/MagRan and of RigL at ΔT = 1100 (Evci et al.).

The providers are timed in interleaved rounds (dense, 0.5, 0.75, 0.9, dense, ...), keeping each
one's minimum, so a burst of load on a shared machine hits every row alike; wall-clock and CPU time
(``time.process_time``, all threads) are both kept. The first call of each model resolves its
backends (measured per layer) and is not timed.

Run: ``pytest bench/test_s2s_speed.py --benchmark`` (EBSPARSE_BENCH_THREADS sets the threads,
EBSPARSE_BENCH_ROUNDS the rounds, default 3). The table also goes to ``bench/results/s2s_speed.md``.
"""

from __future__ import annotations

import os
import time

import torch

BATCH = 8
SPARSITIES = [0.0, 0.5, 0.75, 0.9]
UPDATE_EVERY = 1100


def _model(sparsity: float):
    from ebsparse.models import DDPMUNet, DDPMUNetConfig
    from ebsparse.s2s import Static, densities_of, flops_report

    torch.manual_seed(0)
    model = DDPMUNet(DDPMUNetConfig()).train()
    with torch.device("meta"):
        meta_model = DDPMUNet(DDPMUNetConfig())
    inputs = (torch.zeros(1, 3, 32, 32, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    densities = {}
    if sparsity > 0:
        sp = Static(sparsity=sparsity, distribution="erk")
        sp.apply(model)
        densities = densities_of(sp.masks())
    return model, flops_report(meta_model, inputs, densities)


def _step(model, x, t, eps):
    model.zero_grad(set_to_none=True)
    torch.mean((model(x, t) - eps) ** 2).backward()


def test_unet_cifar10_s2s_train_step(record):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    eps = torch.randn(BATCH, 3, 32, 32, generator=g)
    rows = {}
    for s in SPARSITIES:
        model, report = _model(s)
        _step(model, x, t, eps)  # resolves the backends of every sparse layer
        rows["dense" if s == 0 else f"erk-{s}"] = {"model": model, "report": report, "wall": float("inf"),
                                                   "cpu": float("inf")}
    for _ in range(int(os.environ.get("EBSPARSE_BENCH_ROUNDS", "3"))):
        for r in rows.values():
            wall, cpu = time.perf_counter(), time.process_time()
            _step(r["model"], x, t, eps)
            r["wall"] = min(r["wall"], time.perf_counter() - wall)
            r["cpu"] = min(r["cpu"], time.process_time() - cpu)
    dense = rows["dense"]
    lines = [("| provider | wall ms | speed-up (wall) | CPU ms | speed-up (CPU) | test FLOPs | "
              f"train FLOPs (Static/MagRan) | train FLOPs (RigL, ΔT={UPDATE_EVERY}) |"),
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rep = r["report"]
        record("cifar10 U-Net s2s train step b8", name, r["wall"], 3 * rep.sparse_forward * BATCH / 1e9)
        lines.append(f"| {name} | {r['wall'] * 1e3:.0f} | {dense['wall'] / r['wall']:.2f}x | {r['cpu'] * 1e3:.0f} | "
                     f"{dense['cpu'] / r['cpu']:.2f}x | {rep.test_ratio:.3f} | {rep.train_ratio('static'):.3f} | "
                     f"{rep.train_ratio('rigl', UPDATE_EVERY):.3f} |")
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, CPU"
    out = os.path.join(os.path.dirname(__file__), "results", "s2s_speed.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(f"{header}\n\n" + "\n".join(lines) + "\n")
    assert all(r["wall"] > 0 for r in rows.values())
