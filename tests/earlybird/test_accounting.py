"""The papers' accounting: iterations and time of the longest chain (regions in parallel), each
region trained from its own ticket, the speed-up over dense; checked end to end on a fake clock."""

import json
from types import SimpleNamespace

import pytest
import torch

from ebsparse.drivers.eb_pipeline import EBRun
from ebsparse.earlybird import accounting, plugin
from ebsparse.earlybird.accounting import ema_ticket_share, region_parallel_totals, region_row, warn_short_ema
from ebsparse.metrics.counting import count_params
from tests.earlybird.conftest import tiny_config


def test_longest_chain_not_the_last_ticket_plus_another_region():
    tickets = [{"step": 10, "train_s": 10.0, "tracking_s": 1.0, "found": True},
               {"step": 30, "train_s": 30.0, "tracking_s": 2.0, "found": False}]
    rows = [region_row("region0", tickets[0], 50, 20.0), region_row("region1", tickets[1], 10, 40.0)]
    out = region_parallel_totals(rows)
    # the chain of longest training time (32 + 40 s > 11 + 20 s) sets time and iterations, not the
    # last ticket's step plus another region's training (30 + 50)
    assert out["time_s"] == 72.0 and out["slowest_chain"] == "region1" and out["iterations"] == 40
    assert out["most_iterations"] == 60 and out["most_iterations_chain"] == "region0"
    assert out["one_device_s"] == 32.0 + 60.0
    assert out["ticket_found"] is False and out["no_ticket"] == ["region1"]
    with pytest.raises(ValueError, match="at least one region"):
        region_parallel_totals([])


def test_short_ema_warning():
    assert ema_ticket_share(0.9999, 5000) == pytest.approx(0.6065, abs=1e-4)
    with pytest.warns(UserWarning, match="still 61% the starting weights"):
        warn_short_ema("eb", 5000, 0.9999)
    assert warn_short_ema("eb", 200_000, 0.9999) < 1e-8  # the paper-scale fine-tune leaves the ticket
    with pytest.warns(UserWarning, match="still 12% the starting weights"):  # a short TA-EB region
        warn_short_ema("region0", 425, 0.995)


def test_pipeline_accounting_on_a_fake_clock(tmp_path, monkeypatch):
    """Every training step costs (its model's params / dense params) fake seconds, mask tracking
    nothing: the table's numbers must follow from the tickets and budgets alone."""
    monkeypatch.setattr(plugin, "time", SimpleNamespace(perf_counter=lambda: 0.0))  # mask tracking is free
    dense_params = {}

    def fake_step_cost(self, trainer, stats):
        p = count_params(trainer.model)
        dense_params.setdefault("n", p)  # the first model that steps is the dense search
        self.train_s += p / dense_params["n"]

    monkeypatch.setattr(plugin.StageClock, "after_step", fake_step_cost)
    cfg = tiny_config("training.steps=20", "earlybird.pseudo_epoch_steps=2", "earlybird.queue_length=3",
                      "earlybird.regions=celeba-2", "earlybird.baselines=[dense]", "training.ema_rate=0.5",
                      "earlybird.region_budget=0.9", "earlybird.eb_budget=0.75")
    out = EBRun(cfg, tmp_path, ta_eb=True, progress=False, fid=False, log=lambda s: None).run()
    r, tickets = out["results"], out["search"]["tickets"]
    assert r["dense"]["iterations"] == 20 and r["dense"]["time_s"] == pytest.approx(20.0)
    eb_step = tickets["eb"]["step"]
    cost_eb = r["eb"]["params"] / dense_params["n"]
    assert r["eb"]["iterations"] == 15 and r["eb"]["train_steps"] == 15 - eb_step
    assert r["eb"]["time_s"] == pytest.approx(eb_step + (15 - eb_step) * cost_eb)
    chains = []
    for k, row in enumerate(r["ta_eb"]["regions"]):
        t = tickets[f"region{k}"]
        assert row["search_steps"] == t["step"] and row["train_steps"] == 18 - t["step"]  # from its own ticket
        ckpt = json.loads((tmp_path / f"ta_eb/region{k}/checkpoint.json").read_text()) if (
            tmp_path / f"ta_eb/region{k}/checkpoint.json").is_file() else None
        cost = r["ta_eb"]["region_params"][k] / dense_params["n"]
        chains.append((t["step"] + row["train_steps"], t["step"] + row["train_steps"] * cost))
        assert ckpt is None or ckpt.get("step", row["train_steps"]) == row["train_steps"]
    slowest = max(chains, key=lambda c: c[1])
    assert r["ta_eb"]["iterations"] == slowest[0] == 18
    assert r["ta_eb"]["time_s"] == pytest.approx(slowest[1])
    speed = 20.0 / r["ta_eb"]["time_s"]
    assert f"{speed:.2f}x" in out["table"].splitlines()[4]
    shares = r["ta_eb"]["timestep_shares"]
    assert shares == [0.44, 0.56]  # t < 440 -> region0, 440..999 -> region1
    assert r["ta_eb"]["params"] == pytest.approx(sum(s * p for s, p in zip(shares, r["ta_eb"]["region_params"])))
    assert r["ta_eb"]["region_params_sum"] == sum(r["ta_eb"]["region_params"])
    assert "timed round-robin" in (tmp_path / "table.md").read_text()  # the steady-load check of the speed-ups
    assert (tmp_path / "figures/x0_norm.png").is_file()
    norms = json.loads((tmp_path / "figures/x0_norm.json").read_text())["methods"]
    assert set(norms) == {"Unpruned (dense)", "EB-Diff-Train (EB)", "EB-Diff-Train (TA-EB)"}
    assert all(len(v["t"]) == cfg.sampling.timesteps for v in norms.values())


def test_scratch_structure_is_pruned_from_the_fully_trained_dense_model(tmp_path):
    from ebsparse.pruning import PruningConfig
    from ebsparse.pruning.pipeline import prune
    from ebsparse.pruning.recipe import load_recipe

    cfg = tiny_config("training.steps=12", "earlybird.pseudo_epoch_steps=2", "earlybird.queue_length=3",
                      "earlybird.baselines=[scratch]", "training.ema_rate=0.5", "earlybird.eb_budget=0.5")
    run = EBRun(cfg, tmp_path, ta_eb=False, progress=False, fid=False, log=lambda s: None)
    out = run.run()
    assert out["search"]["dense_steps"] == 12  # the search went on: Scratch needs the trained dense model
    dense = run._dense_final()
    expected = prune(dense, run.inputs, PruningConfig(pruning_ratio=0.3, importance="magnitude")).mask
    saved = load_recipe(tmp_path / "models/scratch")["groups"]
    assert {g["key"]: g["keep"] for g in saved} == {g["key"]: g["keep"] for g in expected.to_json()}
    model, _, _ = run.scratch_structure()
    shrunk_dense = prune(dense, run.inputs, PruningConfig(pruning_ratio=0.3, importance="magnitude")).model
    same = [torch.equal(a, b) for a, b in zip(model.state_dict().values(), shrunk_dense.state_dict().values())
            if a.dtype.is_floating_point and a.numel() > 8]
    assert same and not any(same)  # re-initialised, not the trained weights
