"""The training loop: exact resume after a crash, outputs on disk, refusals."""

import dataclasses
import json

import pytest
import torch

from ebsparse.diffusion.checkpoint import load_checkpoint
from ebsparse.diffusion.trainer import BatchOrder, Trainer
from ebsparse.drivers.checkpoints import model_from_checkpoint


class Crash(RuntimeError):
    pass


def _all_tensors(run_dir):
    tensors, meta = load_checkpoint(run_dir / "checkpoint.safetensors")
    return tensors, meta


def test_killed_and_resumed_run_is_bit_identical(tiny_digits_config, tmp_path):
    whole = Trainer(tiny_digits_config, tmp_path / "whole")
    whole.fit(progress=False)

    def crash_after_checkpoint(trainer, stats):
        if trainer.step == 5:  # the checkpoint is at step 3; steps 4 and 5 are lost
            raise Crash()

    with pytest.raises(Crash):
        Trainer(tiny_digits_config, tmp_path / "split").fit(progress=False, callback=crash_after_checkpoint)
    assert _all_tensors(tmp_path / "split")[1]["step"] == 3
    Trainer(tiny_digits_config, tmp_path / "split").fit(resume=True, progress=False)

    a, meta_a = _all_tensors(tmp_path / "whole")
    b, meta_b = _all_tensors(tmp_path / "split")
    assert meta_a["step"] == meta_b["step"] == 6
    assert set(a) == set(b)
    assert any(k.startswith("optim/") for k in a) and any(k.startswith("ema/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log holds each step once, in order
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "split" / "metrics.csv").read_text().splitlines()[0].startswith("step,loss")


def test_a_resume_computes_with_the_backends_the_saved_run_chose(tiny_digits_config, tmp_path):
    """Auto measures its choices; measured again after a restart, a close call could flip to another
    kernel (other last bits) and the resumed run would drift from the uninterrupted one."""
    from ebsparse.backends import select

    Trainer(tiny_digits_config, tmp_path / "run").fit(progress=False)
    saved = _all_tensors(tmp_path / "run")[1]["backend_choices"]
    assert saved == select.recorded()
    assert any("group_norm_silu" in k for k in saved)  # the U-Net's fused norm + swish chose
    select.clear()
    flipped = {k: ("native" if v == "dense" else "dense") for k, v in saved.items()}
    select.restore(flipped)  # what a fresh process would measure is irrelevant: the checkpoint wins
    Trainer(tiny_digits_config, tmp_path / "run").load()
    assert select.recorded() == saved
    select.clear()


def test_a_resume_under_another_setting_warns_that_it_is_not_exact(tiny_digits_config, tmp_path):
    """Threads, torch, device and instruction sets decide the last bits; a resume under others goes on,
    saying it will not repeat the uninterrupted run."""
    import warnings

    from ebsparse.diffusion.trainer import numerics_setting

    tiny_digits_config.training.steps = 2
    Trainer(tiny_digits_config, tmp_path / "run").fit(progress=False)
    saved = _all_tensors(tmp_path / "run")[1]["numerics"]
    assert saved == numerics_setting(torch.device("cpu")) and saved["threads"] == torch.get_num_threads()
    tiny_digits_config.training.steps = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same setting: no warning
        Trainer(tiny_digits_config, tmp_path / "run").fit(resume=True, progress=False)
    previous = torch.get_num_threads()
    other = 1 if previous > 1 else 2
    tiny_digits_config.training.steps = 4
    torch.set_num_threads(other)
    try:
        with pytest.warns(UserWarning, match=rf"at step 3 with threads {previous} -> {other}: .*not match an "
                                             "uninterrupted run bit for bit"):
            Trainer(tiny_digits_config, tmp_path / "run").fit(resume=True, progress=False)
    finally:
        torch.set_num_threads(previous)


def test_training_changes_weights_and_writes_grids(tiny_digits_config, tmp_path):
    cfg = tiny_digits_config
    cfg.training.sample_every = 3
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(progress=False)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    model, cfg2, meta = model_from_checkpoint(tmp_path / "run")
    assert meta["step"] == 6 and cfg2.to_dict() == cfg.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, trainer.ema.state_dict()[k])


def test_refusals(tiny_digits_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        Trainer(tiny_digits_config, tmp_path / "empty").fit(resume=True, progress=False)
    tiny_digits_config.training.steps = 1
    Trainer(tiny_digits_config, tmp_path / "once").fit(progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_digits_config, tmp_path / "once").fit(progress=False)
    tiny_digits_config.training.batch_size = 5000
    with pytest.raises(ValueError, match="batch_size=5000 exceeds the dataset size 1797"):
        Trainer(tiny_digits_config, tmp_path / "big")


def test_batch_order_depends_only_on_seed_and_step():
    a, b = BatchOrder(10, 3, seed=4), BatchOrder(10, 3, seed=4)
    seq_a = [a.indices(s).tolist() for s in range(7)]
    seq_b = [b.indices(s).tolist() for s in reversed(range(7))][::-1]
    assert seq_a == seq_b
    epoch0 = sum(seq_a[:3], [])
    assert len(set(epoch0)) == 9  # one epoch without repeats; the 10th image is dropped


def test_plugins_see_every_step_and_their_state_resumes(tiny_digits_config, tmp_path):
    """A plugin's hooks run in order every step, it can skip the optimizer, and its state is checkpointed."""
    from ebsparse.diffusion.plugins import TrainerPlugin

    class Counter(TrainerPlugin):
        name = "counter"

        def __init__(self):
            self.calls, self.count = [], torch.zeros(())

        def after_backward(self, trainer):
            self.calls.append("backward")
            return trainer.step % 2 == 0  # skip the optimizer on odd steps

        def after_optimizer_step(self, trainer):
            self.calls.append("optimizer")

        def after_step(self, trainer, stats):
            self.calls.append("step")
            self.count += 1

        def state_tensors(self):
            return {"count": self.count.clone()}, {"calls": len(self.calls)}

        def load_state_tensors(self, tensors, meta):
            self.count = tensors["count"].clone()

    plugin = Counter()
    trainer = Trainer(tiny_digits_config, tmp_path / "run", plugins=[plugin])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()  # step 0: optimizer runs
    after0 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()  # step 1: optimizer skipped
    assert plugin.calls == ["backward", "optimizer", "step"] * 2
    assert any(not torch.equal(before[k], after0[k]) for k in before)
    assert all(torch.equal(after0[k], v) for k, v in trainer.model.state_dict().items())
    trainer.save()
    resumed = Counter()
    again = Trainer(tiny_digits_config, tmp_path / "run", plugins=[resumed])
    again.load()
    assert int(resumed.count) == 2 and again.step == 2


def test_timestep_range_restricts_training_timesteps(tiny_digits_config, tmp_path, monkeypatch):
    seen = []
    import ebsparse.diffusion.trainer as trainer_module

    real = trainer_module.epsilon_loss
    monkeypatch.setattr(trainer_module, "epsilon_loss", lambda m, s, x0, t, n, r: seen.append(t.clone()) or real(m, s, x0, t, n, r))
    trainer = Trainer(tiny_digits_config, tmp_path / "run", timestep_range=(240, 460))
    for _ in range(3):
        trainer.train_step()
    t = torch.cat(seen)
    assert int(t.min()) >= 240 and int(t.max()) <= 460
    with pytest.raises(ValueError, match="timestep_range"):
        Trainer(tiny_digits_config, tmp_path / "bad", timestep_range=(500, 1000))


class _StopAt:
    """A plugin that ends the run once ``trainer.step`` reaches ``at`` (Early-Bird stops once its
    tickets are found); it counts how often it was asked."""

    name = "stop"

    def __init__(self, at):
        self.at, self.asked = at, []

    def __getattr__(self, hook):  # every other hook: the TrainerPlugin defaults
        from ebsparse.diffusion.plugins import TrainerPlugin

        return getattr(TrainerPlugin(), hook)

    def should_stop(self, trainer):
        self.asked.append(trainer.step)
        return trainer.step >= self.at


def test_a_plugin_can_end_fit_early_and_a_resumed_run_stays_stopped(tiny_digits_config, tmp_path):
    stop = _StopAt(4)
    trainer = Trainer(tiny_digits_config, tmp_path / "run", plugins=[stop])
    trainer.fit(progress=False)
    assert trainer.step == 4 and stop.asked == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 4  # the stop writes a checkpoint
    again = _StopAt(4)
    resumed = Trainer(tiny_digits_config, tmp_path / "run", plugins=[again])
    resumed.fit(resume=True, progress=False)
    assert resumed.step == 4 and again.asked == [4]  # asked once at the start, no step taken


def test_resume_auto_starts_fresh_or_continues(tiny_digits_config, tmp_path):
    """The stages of a pipeline run ``fit(resume="auto")``: a stage directory is resumed when it holds
    a checkpoint, started otherwise, and the result is the uninterrupted run's."""
    whole = Trainer(tiny_digits_config, tmp_path / "whole")
    whole.fit(progress=False)

    def crash(trainer, stats):
        if trainer.step == 4:
            raise Crash()

    with pytest.raises(Crash):
        Trainer(tiny_digits_config, tmp_path / "stage").fit(resume="auto", progress=False, callback=crash)
    Trainer(tiny_digits_config, tmp_path / "stage").fit(resume="auto", progress=False)
    a, b = _all_tensors(tmp_path / "whole")[0], _all_tensors(tmp_path / "stage")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="resume='maybe'"):
        Trainer(tiny_digits_config, tmp_path / "x").fit(resume="maybe", progress=False)


def test_step_seconds_leave_out_the_after_step_hooks(tiny_digits_config, tmp_path):
    import time

    from ebsparse.earlybird.plugin import StageClock

    class Slow:
        name = "slow"

        def __getattr__(self, hook):
            from ebsparse.diffusion.plugins import TrainerPlugin

            return getattr(TrainerPlugin(), hook)

        def after_step(self, trainer, stats):
            time.sleep(0.2)

    clock = StageClock()
    trainer = Trainer(tiny_digits_config, tmp_path / "run", plugins=[Slow(), clock])
    t0 = time.perf_counter()
    trainer.fit(progress=False)
    assert 0 < clock.train_s < time.perf_counter() - t0 - 6 * 0.2


def test_optimizer_is_fused_on_the_cpu_and_keeps_masked_weights_at_zero(tiny_digits_config, tmp_path):
    """The trainer's Adam runs the fused kernel on CPU parameters (the per-parameter path's sqrt is
    slow on the exact zeros a sparse layer's moments hold outside its mask); it matches the
    per-parameter path within rounding on a step, and a weight with zero gradient and zero
    moments (a masked weight) stays exactly zero under weight decay."""
    from ebsparse.diffusion.trainer import _make_optimizer

    trainer = Trainer(tiny_digits_config, tmp_path / "run")
    assert trainer.optimizer.defaults["fused"] is True
    cfg = dataclasses.replace(tiny_digits_config.training, optimizer="adamw", weight_decay=0.1)
    w = torch.nn.Linear(6, 5)
    with torch.no_grad():
        w.weight[:, :3] = 0.0
    ref = torch.nn.Linear(6, 5)
    ref.load_state_dict(w.state_dict())
    fused = _make_optimizer(w, cfg)
    per_param = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay, foreach=False)
    for _ in range(3):
        for module, opt in ((w, fused), (ref, per_param)):
            opt.zero_grad()
            module(torch.ones(2, 6)).sum().backward()
            module.weight.grad[:, :3] = 0.0
            opt.step()
    assert torch.equal(w.weight[:, :3], torch.zeros(5, 3))
    torch.testing.assert_close(w.weight, ref.weight)
    torch.testing.assert_close(w.bias, ref.bias)
