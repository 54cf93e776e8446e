"""The whole training iteration of `ebsparse train` (data, forward, backward, clipping, optimizer,
mask re-application, EMA, plugin hooks, RigL updates amortised), dense vs Static vs RigL, the
trainers interleaved in one process.

Families: ``digits`` (configs/digits.yaml and configs/digits_rigl.yaml: the tiny U-Net on 16x16
digits, batch 32, RigL and Static at sparsity 0.75, ΔT = 100) and ``cifar10`` (the CIFAR-10 U-Net
of configs/cifar10.yaml at batch `settings.UNET_BATCH`, on the embedded digits at 32x32x3, ERK 0.75 and 0.9 Static/RigL with the
digits config's ΔT). Each round runs `STEPS[family]` consecutive `Trainer.train_step` calls of
every trainer, in an order rotated per round; a row's time is its minimum over the rounds of the
mean step time of a round, the speed-up is dense's over it, and images/s is the batch over it.

RigL's mask update (dense weight gradient, drop/grow, skipped optimizer step, EMA re-mask) comes
once every ΔT steps: its trainer starts one step before an update, so the first round contains
the update; the update's extra time over an ordinary step (that round's update step less the
round's other steps' mean) is added to the row divided by ΔT (notes: ``update_extra_ms``).

Run: ``pytest bench/test_train_iteration.py --benchmark`` (EBSPARSE_BENCH_ROUNDS, default 7).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pytest
import torch

from bench import settings
from bench.timing import ROWS, Row, paired_speedup_median

ROUNDS = 7
STEPS = {"digits": 2 if settings.QUICK else 10, "cifar10": 2}  # >= 2: an update step is timed against the others
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = {"digits": ["dense", "static-0.75", "rigl-0.75"],
            "cifar10": ["dense", "static-0.75", "rigl-0.75", "static-0.9", "rigl-0.9"]}


def _config(family: str, variant: str):
    from ebsparse.diffusion.config import load_config

    overrides = []
    if family == "digits":
        path = CONFIGS / ("digits.yaml" if variant == "dense" else "digits_rigl.yaml")
    else:
        path = CONFIGS / "cifar10.yaml"
        # The embedded digits at CIFAR-10's size stand in for CIFAR-10 (nothing downloads).
        overrides += [f"training.batch_size={settings.UNET_BATCH}", f"model.ch={settings.UNET_CHANNELS}",
                      f"model.num_groups={settings.UNET_NORM_GROUPS}", "data.type=digits", "data.image_size=32",
                      "data.channels=3"]
    if settings.QUICK and family == "digits":
        overrides += ["training.batch_size=8"]
    return load_config(path, overrides)


def _trainer(family: str, variant: str, run_dir: str):
    from ebsparse.diffusion.trainer import Trainer

    config = _config(family, variant)
    plugins = []
    if variant != "dense":
        from ebsparse.s2s.config import SparsityConfig
        from ebsparse.s2s.trainer_plugin import SparsityPlugin

        method, sparsity = variant.split("-")
        rigl = _config("digits", "rigl").algorithms["sparsity"]
        section = {**rigl, "method": method, "sparsity": float(sparsity)}
        plugins = [SparsityPlugin(SparsityConfig.from_dict(section))]
    trainer = Trainer(config, run_dir, plugins=plugins)
    trainer.train_step()  # resolves the backends of every sparse layer
    if plugins and plugins[0].sparsifier.method == "rigl":
        sp = plugins[0].sparsifier
        # The next call of train_step is the step before an update (the first round holds the update).
        sp.steps = sp.config.update_every - 1 - 1
        sp.step()  # the update step's dense-gradient flag, as the schedule sets it
        assert sp.schedule.is_update(sp.steps + 1)
    return trainer


@pytest.mark.parametrize("family", list(VARIANTS))
def test_training_iteration(benchmark, family):
    steps_per_round = STEPS[family]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: _trainer(family, v, f"{tmp}/{v}") for v in VARIANTS[family]}
        names = list(trainers)
        per_round = {v: [] for v in names}
        update_extra = {}

        def one_round():
            k = len(per_round[names[0]]) % len(names)
            for name in names[k:] + names[:k]:
                trainer = trainers[name]
                seconds = []
                for _ in range(steps_per_round):
                    start = time.perf_counter()
                    trainer.train_step()
                    seconds.append(time.perf_counter() - start)
                plugin = trainer.plugins[0] if trainer.plugins else None
                if plugin is not None and plugin.sparsifier.last_update.get("step") in range(
                        plugin.sparsifier.steps - steps_per_round + 1, plugin.sparsifier.steps + 1):
                    at = plugin.sparsifier.last_update["step"] - (plugin.sparsifier.steps - steps_per_round) - 1
                    others = [s for i, s in enumerate(seconds) if i != at] or seconds
                    update_extra[name] = seconds[at] - statistics.mean(others)
                    seconds = others
                per_round[name].append(statistics.mean(seconds))

        benchmark.group = f"{family} training iteration (Trainer.train_step), round-robin"
        benchmark.pedantic(one_round, rounds=settings.rounds(ROUNDS), warmup_rounds=0, iterations=1)
        if benchmark.stats is None:
            return
        batch = trainers["dense"].config.training.batch_size
        dense = min(per_round["dense"])
        for name in names:
            trainer = trainers[name]
            every = trainer.plugins[0].sparsifier.config.update_every if trainer.plugins else 0
            extra = update_extra.get(name, 0.0)
            amortised = extra / every if every and trainer.plugins[0].sparsifier.method != "static" else 0.0
            seconds = min(per_round[name]) + amortised
            median = statistics.median(per_round[name])
            ROWS.append(Row(benchmark.group, name, seconds, "dense", dense, 0.0, {
                "rounds": len(per_round[name]), "steps_per_round": steps_per_round, "batch": batch,
                "images_per_s": batch / seconds, "median_ms": 1e3 * median,
                "dense_median_ms": 1e3 * statistics.median(per_round["dense"]),
                "speedup_paired_median": paired_speedup_median(per_round["dense"],
                                                               [t + amortised for t in per_round[name]]),
                **({"update_extra_ms": 1e3 * extra, "update_every": every} if name in update_extra else {})}))
