"""Training step of the CIFAR-10 DDPM U-Net, dense vs sparse-to-sparse (CPU, batch 8, forward + backward).

Providers: ``dense`` and ERK masks at sparsity 0.5, 0.75 and 0.9 (the masks Static/RigL/MagRan-DM
train with; a step between mask updates costs the same for all three), every sparse layer on the
auto backend, so each runs whichever of the sparse kernel and dense is faster for its shape and
density. Beside each measured speed-up, the FLOPs ratios the paper would report (in the row's
notes and its ``extra_info``): test FLOPs f_S/f_D and the training FLOPs of Static/MagRan and of
RigL at ΔT = 1100 (Evci et al.).

Every row is timed alternately with the dense model (bench/timing.py); wall-clock time is
pytest-benchmark's, and the CPU time of both sides (``time.process_time``, all threads) is kept in
the notes too. The first call of each model resolves its backends (measured per layer) and is not
timed.

Run: ``pytest bench/test_s2s_speed.py --benchmark`` (bench/settings.py lists the environment
variables; 9 rounds by default: with 3, the dense baseline differed by up to 50% from the
pruning bench's in the same session; the notes give the rounds and both medians).
"""

from __future__ import annotations

import functools
import time

import pytest
import torch

from bench import settings
from bench.timing import paired

BATCH = settings.UNET_BATCH
SPARSITIES = [0.0, 0.5, 0.75, 0.9]
UPDATE_EVERY = 1100
ROUNDS = 9


@functools.cache
def _model(sparsity: float):
    from ebsparse.models import DDPMUNet, DDPMUNetConfig
    from ebsparse.s2s import Static, densities_of, flops_report

    config = DDPMUNetConfig(ch=settings.UNET_CHANNELS, num_groups=settings.UNET_NORM_GROUPS)
    torch.manual_seed(0)
    model = DDPMUNet(config).train()
    with torch.device("meta"):
        meta_model = DDPMUNet(config)
    inputs = (torch.zeros(1, 3, 32, 32, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    densities = {}
    if sparsity > 0:
        sp = Static(sparsity=sparsity, distribution="erk")
        sp.apply(model)
        densities = densities_of(sp.masks())
    return model, flops_report(meta_model, inputs, densities)


def _timed_step(model, cpu_seconds: list[float]):
    """One training step of `model` on a fixed batch; appends each call's CPU time to `cpu_seconds`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    eps = torch.randn(BATCH, 3, 32, 32, generator=g)

    def step():
        start = time.process_time()
        model.zero_grad(set_to_none=True)
        torch.mean((model(x, t) - eps) ** 2).backward()
        cpu_seconds.append(time.process_time() - start)

    step()  # resolves the backends of every sparse layer
    return step


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"sparsity-{s}")
def test_unet_cifar10_s2s_train_step(benchmark, sparsity):
    model, report = _model(sparsity)
    cpu, dense_cpu = [], []
    rounds = settings.rounds(ROUNDS)
    provider = "dense" if sparsity == 0 else f"erk-{sparsity}"
    row = paired(benchmark, _timed_step(model, cpu), _timed_step(_model(0.0)[0], dense_cpu),
                 group=f"cifar10 U-Net s2s train step b{BATCH}", provider=provider, rounds=rounds,
                 gflop=3 * report.sparse_forward * BATCH / 1e9)
    if row is None:  # --benchmark-disable
        return
    notes = {"cpu_ms": 1e3 * min(cpu[-rounds:]), "dense_cpu_ms": 1e3 * min(dense_cpu[-rounds:]),
             "test_flops": report.test_ratio, "train_flops_static": report.train_ratio("static"),
             f"train_flops_rigl_dT{UPDATE_EVERY}": report.train_ratio("rigl", UPDATE_EVERY)}
    notes["speedup_cpu"] = notes["dense_cpu_ms"] / notes["cpu_ms"]
    row.extra.update(notes)
    benchmark.extra_info.update(notes)
