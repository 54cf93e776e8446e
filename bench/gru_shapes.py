"""The ChiroDiff GRU the GRU benchmarks time, and its training step (shared by bench/test_gru_step.py
and bench/gru_cpu_time.py).

ChiroDiff's GRU (ebsparse/models/chirodiff.py): 13 input features, hidden 128, 3 layers,
bidirectional, batch_first; batch 128 (the sparse-to-sparse paper's). Sequence length 128: KanjiVG
characters resampled for ChiroDiff run to roughly 100-200 points, and 128 sits in that range while
keeping a step short enough to interleave many rounds. Sparse models: every GRU weight at one
density, random exact-count masks (as Static/RigL/MagRan's ER draws; the step costs the same
between mask updates), on the auto backend.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from bench import settings

INPUT, HIDDEN, LAYERS = 13, 128, 3
BATCH, LENGTH = (8, 12) if settings.QUICK else (128, 128)
DENSITIES = (0.1, 0.25)
MODELS = ["dense"] + [f"density-{d}" for d in DENSITIES]


@functools.cache
def build(name: str) -> nn.Module:
    """The dense nn.GRU (masked weights of the sparsest model, so both compute the same function
    at 0.1) or a SparseGRU at one density."""
    from ebsparse.formats import magnitude_mask
    from ebsparse.nn import SparseGRU

    torch.manual_seed(0)
    dense = nn.GRU(INPUT, HIDDEN, LAYERS, bidirectional=True, batch_first=True)
    if name == "dense":
        return dense.train()
    density = float(name.split("-")[1])
    g = torch.Generator().manual_seed(1)
    masks = {n: magnitude_mask(torch.rand(p.shape, generator=g), density)
             for n, p in dense.named_parameters() if n.startswith("weight_")}
    return SparseGRU.from_dense(dense, masks).train()


def useful_gflop(name: str) -> float:
    """Useful GFLOP of one forward + backward (3 matmul passes over the kept weights; gates left out)."""
    density = 1.0 if name == "dense" else float(name.split("-")[1])
    macs = 0
    for layer in range(LAYERS):
        fan_in = INPUT if layer == 0 else 2 * HIDDEN
        macs += 2 * BATCH * LENGTH * 3 * HIDDEN * (fan_in + HIDDEN)  # two directions
    return 3 * 2 * macs * density / 1e9


def train_step(model: nn.Module):
    """One forward + backward (mean squared output) on a fixed batch, gradients reset first."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, LENGTH, INPUT, generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        out, _ = model(x)
        out.square().mean().backward()

    return step
