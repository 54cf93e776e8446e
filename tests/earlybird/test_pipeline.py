"""EB-Diff-Train on a tiny model: the ticket appears during training, stages resume exactly,
region-parallel training runs in two gloo processes."""

import json
from pathlib import Path

import pytest
import torch

from ebsparse.diffusion.trainer import Trainer
from ebsparse.drivers.eb_pipeline import EBRun
from ebsparse.earlybird.plugin import TicketPlugin, TicketSpec
from ebsparse.pruning import PruningConfig, plan
from ebsparse.models import example_inputs
from tests.earlybird.conftest import tiny_config

SMALL_RUN = ["training.steps=10", "earlybird.pseudo_epoch_steps=2", "earlybird.queue_length=3",
             "earlybird.regions=celeba-2", "earlybird.baselines=[]", "training.ema_rate=0.5",
             "earlybird.region_training=routed", "earlybird.region_steps=4"]


def test_ticket_found_while_a_tiny_model_trains(tmp_path):
    cfg = tiny_config("training.ema_rate=0.5", "training.steps=40")
    inputs = example_inputs(cfg.model)
    spec = TicketSpec("eb", PruningConfig(pruning_ratio=0.5))
    plugin = TicketPlugin([spec], inputs, every=2, eta=0.1, queue_length=3)
    trainer = Trainer(cfg, tmp_path, plugins=[plugin])
    masks_at = {}
    while trainer.step < 40 and not plugin.all_resolved():
        trainer.train_step()
        if trainer.step % 2 == 0:  # the tracker's mask is the pruner's mask on the EMA weights now
            masks_at[trainer.step] = plan(trainer.model, inputs, spec.config, ema_state=trainer.ema.state_dict()).mask
    tracker = plugin.trackers["eb"]
    assert tracker.found, f"no ticket in 40 steps; distances:\n{tracker.distances()}"
    for s, m in zip(tracker.steps, tracker.masks):
        assert m.keep.keys() == masks_at[s].keep.keys() and all(torch.equal(m[k], masks_at[s][k]) for k in m)
    d = tracker.distances()
    assert d.max() > 0  # the masks did move before settling
    first = next(e for e in range(2, len(d)) if all(d[e, e - j] <= 0.1 for j in (1, 2)))
    assert tracker.ticket_epoch == first and tracker.ticket_step == 2 * (first + 1)


def _final_state(run_dir):
    from safetensors.torch import load_file

    return {**{f"eb/{k}": v for k, v in load_file(str(run_dir / "models/eb/model.safetensors")).items()},
            **{f"ta/{k}": v for k, v in load_file(str(run_dir / "models/ta_eb/router.safetensors")).items()}}


def _tickets(run_dir):
    t = json.loads((run_dir / "stages/search.json").read_text())["tickets"]
    return {k: (v["found"], v["epoch"], v["step"]) for k, v in t.items()}


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def observed_small_run(tmp_path_factory):
    """One uninterrupted tiny EB + TA-EB run, and what the trainers held when the EB ticket was saved
    (EMA and live weights) and when the EB stage took its first step."""
    run_dir = tmp_path_factory.mktemp("eb") / "a"
    seen = {}
    save_ticket, train_step = EBRun._save_ticket, Trainer.train_step

    def spy_save_ticket(self, name, plugin, trainer, clock):
        if name == "eb":
            seen["ema"] = {k: v.detach().clone() for k, v in trainer.ema.state_dict().items()}
            seen["live"] = _state(trainer.model)
        return save_ticket(self, name, plugin, trainer, clock)

    def spy_train_step(self):
        if self.run_dir.name == "eb" and self.step == 0:
            seen["eb_start"] = _state(self.model)
        return train_step(self)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the function-scoped tests: same threads, same bits
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(EBRun, "_save_ticket", spy_save_ticket)
            mp.setattr(Trainer, "train_step", spy_train_step)
            EBRun(tiny_config(*SMALL_RUN), run_dir, ta_eb=True, progress=False, fid=False, log=lambda s: None).run()
    finally:
        torch.set_num_threads(threads)
    return run_dir, seen


@pytest.fixture(scope="module")
def small_run(observed_small_run):
    """The run directory of :func:`observed_small_run` (shared: the resume and the gloo tests start from it)."""
    return observed_small_run[0]


def test_small_run_outputs(small_run):
    from ebsparse.metrics.counting import count_params
    from ebsparse.models import build_model
    from ebsparse.pruning.recipe import load_pruned

    results = json.loads((small_run / "results.json").read_text())["results"]
    assert set(results) == {"eb", "ta_eb"} and results["ta_eb"]["region_training"] == "routed"
    final, _ = load_pruned(small_run / "models/eb", build_model)
    ticket, _ = load_pruned(small_run / "tickets/eb", build_model)
    dense = count_params(build_model(tiny_config(*SMALL_RUN).model))
    assert results["eb"]["params"] == count_params(final) == count_params(ticket) < dense
    for name in ("distance_eb.png", "distance_region0.png", "distance_region1.png", "samples_eb.png", "samples_ta_eb.png"):
        assert (small_run / "figures" / name).is_file()
    assert "EB-Diff-Train (TA-EB)" in (small_run / "table.md").read_text()
    from PIL import Image

    grid = Image.open(small_run / "figures" / "samples_eb.png")  # 4 samples: a 2x2 grid
    assert grid.width >= 2 * 64 and grid.height > grid.width  # enlarged, under a caption strip


def test_eb_ticket_is_the_shrunk_ema_weights_and_the_eb_stage_starts_from_it(observed_small_run):
    from ebsparse.models import build_model
    from ebsparse.pruning.masks import ChannelMask
    from ebsparse.pruning.recipe import load_pruned, load_recipe
    from ebsparse.pruning.shrinking import shrink

    run_dir, seen = observed_small_run
    cfg = tiny_config(*SMALL_RUN)
    assert any(not torch.equal(seen["ema"][k], seen["live"][k]) for k in seen["ema"])  # ema_rate 0.5: they differ
    dense = build_model(cfg.model)
    dense.load_state_dict(seen["ema"])
    mask = ChannelMask.from_json(load_recipe(run_dir / "tickets/eb")["groups"])
    expected = _state(shrink(dense.eval(), mask, example_inputs(cfg.model)))
    ticket = _state(load_pruned(run_dir / "tickets/eb", build_model)[0])
    assert ticket.keys() == expected.keys() and all(torch.equal(ticket[k], expected[k]) for k in ticket)
    start = seen["eb_start"]
    assert start.keys() == ticket.keys() and all(torch.equal(start[k], ticket[k]) for k in ticket)


def test_stages_resume_exactly_after_crashes(small_run, tmp_path, monkeypatch):
    cfg = tiny_config(*SMALL_RUN)
    real = Trainer.train_step
    calls = {"n": 0, "crash_at": None}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            raise KeyboardInterrupt("simulated crash")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", flaky)
    search_steps = _tickets(small_run)["eb"][2]
    for crash_at in (search_steps - 1, 3):  # inside the ticket search, then inside the EB finetune
        calls.update(n=0, crash_at=crash_at)
        with pytest.raises(KeyboardInterrupt):
            EBRun(cfg, tmp_path / "b", ta_eb=True, progress=False, fid=False, log=lambda s: None).run()
    calls.update(n=0, crash_at=None)
    EBRun(cfg, tmp_path / "b", ta_eb=True, progress=False, fid=False, log=lambda s: None).run()
    with pytest.raises(ValueError, match="other settings"):  # finished stages are never reused for another config
        EBRun(tiny_config(*SMALL_RUN, "earlybird.eta=0.2"), tmp_path / "b", ta_eb=True, progress=False, fid=False).run()
    assert _tickets(tmp_path / "b") == _tickets(small_run)
    a, b = _final_state(small_run), _final_state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_refuses_to_overwrite_a_run(tmp_path):
    from ebsparse.cli import main

    (tmp_path / "stages").mkdir()
    assert main(["eb-train", "configs/digits_eb.yaml", "--run-dir", str(tmp_path)]) == 2
    assert main(["eb-train", "configs/digits_eb.yaml", "--run-dir", str(tmp_path / "new"), "--resume"]) == 2


def test_region_parallel_gloo_two_processes(small_run, tmp_path, monkeypatch):
    """The finished search and EB stages of ``small_run`` are reused; two processes train one region each."""
    import shutil

    import torch.multiprocessing as mp

    from ebsparse.earlybird.router import load_router
    from ebsparse.models import build_model
    from ebsparse.pruning.recipe import load_pruned
    from tests.earlybird.conftest import DEMO, TINY

    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("ta_eb", "ta_eb.json", "eval_ta_eb.json"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from eb_dist_worker import run_rank

    mp.spawn(run_rank, args=(2, str(tmp_path / "init"), str(run), str(DEMO), [*TINY, *SMALL_RUN]), nprocs=2, join=True)
    stage = json.loads((run / "stages/ta_eb.json").read_text())
    assert stage["region_training"] == "processes" and stage["world_size"] == 2
    assert json.loads((run / "ta_eb_parallel/ranks.json").read_text())["groups"] == [[0], [1]]
    router, doc = load_router(run / "models/ta_eb", build_model)
    assert len(router.models) == 2 and doc["extra"]["region_training"] == "processes"
    for k in range(2):  # each process trained its region's ticket
        ticket, _ = load_pruned(run / f"tickets/region{k}", build_model)
        assert any(not torch.equal(a, b) for a, b in zip(ticket.state_dict().values(),
                                                         router.models[k].state_dict().values()))
    assert json.loads((run / "stages/eval_ta_eb.json").read_text())["region_training"] == "processes"


@pytest.mark.slow  # ~8 s: five trainings; run with -m slow
def test_sequential_regions_and_all_baselines(tmp_path):
    overrides = [o for o in SMALL_RUN if not o.startswith("earlybird.baselines")]
    cfg = tiny_config(*overrides, "earlybird.region_training=sequential", "training.steps=8",
                      "earlybird.baselines=[dense, scratch, train_prune_finetune]")
    out = EBRun(cfg, tmp_path, ta_eb=True, progress=False, fid=False, log=lambda s: None).run()
    r = out["results"]
    assert list(r) == ["dense", "eb", "ta_eb", "scratch", "train_prune_finetune"]
    search = out["search"]
    assert search["dense_steps"] == 8  # a baseline needs the full dense run, so the search went on
    assert r["scratch"]["params"] == r["eb"]["params"] and r["train_prune_finetune"]["params"] == r["eb"]["params"]
    assert r["dense"]["params"] > r["eb"]["params"]
    assert r["train_prune_finetune"]["iterations"] == 8 + r["eb"]["train_steps"]
    assert r["ta_eb"]["region_training"] == "sequential"
    eb_ticket = search["tickets"]["eb"]
    assert r["eb"]["iterations"] == 8 and r["eb"]["search_steps"] == eb_ticket["step"]
    for k in range(2):  # each region model trained in its own directory, on its own timesteps
        assert (tmp_path / f"ta_eb/region{k}/checkpoint.safetensors").is_file()
    assert "Train-prune-finetune" in out["table"] and "Scratch" in out["table"]


def test_timestep_aware_taylor_tickets(tmp_path):
    """region_importance: taylor scores each region's channels from that region's timesteps only,
    with a loss seeded by the step (so a resumed search computes the same masks)."""
    cfg = tiny_config("earlybird.region_importance=taylor", "earlybird.regions=celeba-2", "earlybird.taylor_batch_size=4")
    run = EBRun(cfg, tmp_path, ta_eb=True, progress=False, fid=False)
    specs = {s.name: s for s in run.ticket_specs()}
    assert specs["eb"].loss_fn is None and specs["eb"].config.importance == "magnitude"
    assert specs["region1"].config.importance == "taylor" and specs["region1"].config.taylor_t_range == (440, 999)
    model = torch.nn.Module()
    seen = []
    model.forward = lambda x, t: (seen.append(t.clone()), torch.zeros_like(x))[1]
    specs["region1"].loss_fn(7)(model)
    specs["region1"].loss_fn(7)(model)
    specs["region1"].loss_fn(8)(model)
    assert all(bool(((t >= 440) & (t <= 999)).all()) for t in seen)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])
    plugin = TicketPlugin(list(specs.values()), run.inputs, every=1)
    trainer = Trainer(cfg, tmp_path / "t", plugins=[plugin])
    trainer.train_step()
    masks = {k: t.masks[-1] for k, t in plugin.trackers.items()}
    assert set(masks) == {"eb", "region0", "region1"}
    assert masks["region1"].density() < masks["region0"].density()  # 0.8 vs 0.3 of the channels removed
