"""The sparse-to-sparse paper's models, one row per model and sparsity: the training step (forward +
backward, CPU) of the model with the ERK masks Static/RigL/MagRan-DM train with, against the same
model dense. This is the measured column beside the FLOPs of ``ebsparse s2s-table``.

Models (each built from its shipped config, at the config's batch size and sequence length):

- ``ddpm-digits``: the DDPM U-Net of ``configs/digits_rigl.yaml``;
- ``ldm-digits``: the LDM U-Net of ``configs/digits_ldm.yaml`` on its 8x8x3 latents (the frozen
  autoencoder is not part of the step);
- ``chirodiff-kanjivg`` / ``chirodiff-quickdraw``: the paper's ChiroDiff GRUs (3 x 96, 3 x 128) at
  batch 128 (the paper's) and the config's sequence length;
- ``dit-digits``: the small DiT of ``configs/digits_dit.yaml`` (class-conditional).

Every sparse layer runs on the auto backend (the sparse kernel where it beats dense, dense
otherwise). Rows are timed alternately with their dense model (bench/timing.py); the FLOPs ratios
the paper would report are in each row's notes. A model whose config this checkout lacks is skipped.

Run: ``pytest bench/test_s2s_models.py --benchmark`` (bench/settings.py lists the environment variables).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from bench import settings
from bench.timing import paired

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {
    "ddpm-digits": ("digits_rigl.yaml", None),
    "ldm-digits": ("digits_ldm.yaml", None),
    "chirodiff-kanjivg": ("kanjivg_chirodiff.yaml", 128),
    "chirodiff-quickdraw": ("quickdraw_chirodiff.yaml", 128),
    "dit-digits": ("digits_dit.yaml", None),
}
SPARSITIES = [0.5, 0.75, 0.9]
ROUNDS = 7
UPDATE_EVERY = 1100


@functools.cache
def _setting(name: str):
    """(config, batch) of a model row, or None when the config is not in this checkout."""
    from ebsparse.diffusion.config import load_config

    file, batch = MODELS[name]
    path = CONFIGS / file
    if not path.is_file():
        return None
    overrides = ["data.root=/nonexistent"] if "quickdraw" in file else []  # the model, not the data, is timed
    config = load_config(path, overrides)
    batch = batch or config.training.batch_size
    return config, (2 if settings.QUICK else batch)


def _inputs(config, batch: int, device: str = "cpu"):
    from ebsparse.models import example_inputs

    g = torch.Generator().manual_seed(0)
    out = []
    for t in example_inputs(config.model, device=device, seq_len=config.data.seq_len):
        shape = (batch, *t.shape[1:])
        if device == "meta":
            out.append(torch.zeros(shape, dtype=t.dtype, device="meta"))
        elif t.is_floating_point():
            out.append(torch.randn(shape, generator=g))
        else:
            out.append(torch.randint(0, 10, shape, generator=g))
    return tuple(out)


@functools.cache
def _model(name: str, sparsity: float):
    from ebsparse.models import build_model
    from ebsparse.s2s import Static, densities_of, flops_report

    config, batch = _setting(name)
    torch.manual_seed(0)
    model = build_model(config.model).train()
    with torch.no_grad():  # zero-initialised output layers (DiT's adaLN-Zero) would leave some layers idle
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    with torch.device("meta"):
        meta_model = build_model(config.model)
    densities = {}
    if sparsity > 0:
        sp = Static(sparsity=sparsity, distribution="erk")
        sp.apply(model)
        densities = densities_of(sp.masks())
    return model, flops_report(meta_model, _inputs(config, 1, "meta"), densities)


def _step(model, inputs):
    def step():
        model.zero_grad(set_to_none=True)
        out = model(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        out.float().pow(2).mean().backward()

    step()  # resolves the backends of every sparse layer
    return step


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"S-{s}")
@pytest.mark.parametrize("name", list(MODELS))
def test_s2s_model_train_step(benchmark, name, sparsity):
    setting = _setting(name)
    if setting is None:
        pytest.skip(f"configs/{MODELS[name][0]} is not in this checkout")
    config, batch = setting
    inputs = _inputs(config, batch)
    model, report = _model(name, sparsity)
    row = paired(benchmark, _step(model, inputs), _step(_model(name, 0.0)[0], inputs),
                 group=f"s2s paper models: {name} train step b{batch}", provider=f"erk-{sparsity}",
                 rounds=settings.rounds(ROUNDS), gflop=3 * report.sparse_forward * batch / 1e9)
    if row is None:  # --benchmark-disable
        return
    notes = {"test_flops": report.test_ratio, "train_flops_static": report.train_ratio("static"),
             f"train_flops_rigl_dT{UPDATE_EVERY}": report.train_ratio("rigl", UPDATE_EVERY)}
    row.extra.update(notes)
    benchmark.extra_info.update(notes)
