"""Training step of DiT-S/2 on the digits config's data (16x16 grey, 64 tokens, batch 32, 10 classes),
dense vs channel-pruned vs sparse-to-sparse (CPU, forward + backward).

Providers:

- ``dense``: DiT-S/2 (depth 12, hidden 384, 6 heads of 64, MLP 1536);
- ``pruned-0.5-all``: every group at 0.5, attention by whole heads (6 -> 3), MLP 1536 -> 768, the
  residual and conditioning widths 384 -> 192 (the U-Net tables' convention: a quarter of the MACs);
- ``pruned-0.5-heads-mlp``: the EB paper's DiT table's pruning: heads and MLP width halved, the
  conditioning width halved, the residual width kept (half the MACs; see
  tests/pruning/test_attention_pruning.py);
- ``erk-0.9``: ERK masks at sparsity 0.9 on all linears (q/k/v fused: one sparse linear per block),
  each sparse layer on the auto backend (the kernel where it beats dense, dense otherwise).

Every row is timed alternately with the dense step (bench/timing.py). "useful GFLOP" is
3 x 2 x MACs x batch with attention matmuls (the DiT paper's counter) for the pruned rows and
3 x the sparse forward FLOPs for the ERK row.

Run: ``pytest bench/test_dit_speed.py --benchmark`` (bench/settings.py lists the environment variables).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from bench import breakdown, settings
from bench.timing import paired

BATCH = 4 if settings.QUICK else 32
ROUNDS = 5
SPEC = {"type": "dit", "size": "S", "patch_size": 2, "input_size": 16, "in_channels": 1, "num_classes": 10,
        "learn_sigma": False}
if settings.QUICK:
    SPEC = {**SPEC, "hidden_size": 64, "depth": 2, "num_heads": 2}
PROVIDERS = ["dense", "pruned-0.5-all", "pruned-0.5-heads-mlp", "erk-0.9"]


def _inputs(device="cpu", batch=1):
    from ebsparse.models import example_inputs

    return example_inputs(SPEC, device=device, batch=batch)


@functools.cache
def _built(provider: str):
    """(model in train mode, useful GFLOP of a step, its linears' weight FLOPs over dense's)."""
    from ebsparse.metrics.counting import count_macs
    from ebsparse.models import build_model
    from ebsparse.pruning import PruningConfig, prune
    from ebsparse.s2s import Static, densities_of, flops_report

    torch.manual_seed(0)
    model = build_model(SPEC)
    with torch.no_grad():  # adaLN-Zero starts at zero: give every layer work to do
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    inputs = _inputs()
    if provider.startswith("pruned"):
        ignored = None if provider.endswith("-all") else ("x_embedder.proj", "final_layer.linear")
        model = prune(model, inputs, PruningConfig(pruning_ratio=0.5, attention="heads", ignored_layers=ignored)).model
    if provider.startswith("erk"):
        with torch.device("meta"):
            meta = build_model(SPEC)
        sp = Static(sparsity=0.9, distribution="erk")
        sp.apply(model)
        report = flops_report(meta, _inputs("meta"), densities_of(sp.masks()))
        return model.train(), 3 * report.sparse_forward * BATCH / 1e9, report.weight_ratio
    meta = copy.deepcopy(model).to("meta")
    gflop = 3 * 2 * count_macs(meta, *_inputs("meta")).total * BATCH / 1e9
    return model.train(), gflop, flops_report(meta, _inputs("meta"), {}).dense_weights / _dense_weight_flops()


@functools.cache
def _dense_weight_flops() -> float:
    """Forward FLOPs of the dense DiT's linear weights (FlopsReport.dense_weights)."""
    from ebsparse.models import build_model
    from ebsparse.s2s import flops_report

    with torch.device("meta"):
        return flops_report(build_model(SPEC), _inputs("meta"), {}).dense_weights


def _model(provider: str):
    """(model in train mode, useful GFLOP of a step)."""
    return _built(provider)[:2]


def _step(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, 16, 16, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    eps = torch.randn(BATCH, 1, 16, 16, generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        torch.mean((model(x, t, y) - eps) ** 2).backward()

    step()  # resolves the backends of every sparse layer
    return step


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dit_s2_train_step(benchmark, provider):
    torch.set_num_threads(settings.threads())
    model, gflop = _model(provider)
    paired(benchmark, _step(model), _step(_model("dense")[0]), group=f"DiT-S/2 digits 16px train step b{BATCH}",
           provider=provider, rounds=settings.rounds(ROUNDS), gflop=gflop)


def test_dit_s2_step_breakdown():
    """One profiled step of each provider split by category, and what issue 19's goals for the
    DiT (ERK 0.9 >= 4x, pruned 0.5 >= 3.6x) ask of its linears (bench/breakdown.py), into
    dit_step_breakdown.md. Timed rows come from test_dit_s2_train_step."""
    torch.set_num_threads(settings.threads())
    steps = {p: _step(_model(p)[0]) for p in PROVIDERS}
    profiles = {p: breakdown.profile_step(step) for p, step in steps.items()}
    fractions = {p: _built(p)[2] for p in PROVIDERS}
    goals = {"erk-0.9": 4.0, "pruned-0.5-all": 3.6}
    header = (f"DiT-S/2 train step (forward + backward) on 16x16 digits, batch {BATCH}, {torch.get_num_threads()} "
              "threads; one profiled step per model")
    text = (f"{header}\n\n{breakdown.table(profiles)}\n\nWhat the goals ask of the linears\n\n"
            f"{breakdown.goal_table(profiles, fractions, goals)}\n")
    out = settings.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "dit_step_breakdown.md").write_text(text)
    print(f"\n{text}")
