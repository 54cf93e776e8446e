"""Issue 25 item 3 and the resume parts of item 6: ``train --resume`` and ``eb-train --resume``,
run as the README writes them."""

import json

import pytest

from ebsparse.cli import main

from .conftest import SMALL, readme_command

RESUME = "ebsparse train configs/digits.yaml --resume"


@pytest.fixture
def trained(workdir):
    assert main([*readme_command("ebsparse train configs/digits.yaml"), *SMALL]) == 0
    return workdir / "runs" / "digits"


def test_resume_with_more_steps_as_the_readme_writes_it(trained, capsys):
    argv = readme_command(RESUME)
    assert "training.steps=4000" in argv
    capsys.readouterr()
    assert main([*argv, *SMALL, "--set", "training.steps=4"]) == 0
    assert "trained to step 4 (2 steps in" in capsys.readouterr().out
    record = json.loads((trained / "config_changes.jsonl").read_text().splitlines()[-1])
    assert record == {"step": 2, "changes": {"training.steps": [2, 4]}, "breaks_exact_resume": []}


def test_resume_refuses_a_changed_learning_rate_unless_allowed(trained, capsys):
    argv = [*readme_command(RESUME), *SMALL, "--set", "training.steps=3", "--set", "training.lr=0.01"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training.lr 0.001 -> 0.01" in err and "--allow-config-change" in err and len(err.strip().splitlines()) == 1
    assert json.loads((trained / "config.json").read_text())["training"]["lr"] == 0.001
    assert not (trained / "config_changes.jsonl").exists()

    assert main([*argv, "--allow-config-change"]) == 0
    assert "resuming at step 2 with a changed config (training.lr 0.001 -> 0.01" in capsys.readouterr().out
    record = json.loads((trained / "config_changes.jsonl").read_text())
    assert record["step"] == 2 and record["changes"]["training.lr"] == [0.001, 0.01]
    assert record["breaks_exact_resume"] == ["training.lr"]
    assert json.loads((trained / "config.json").read_text())["training"]["lr"] == 0.01


def test_resume_to_fewer_steps_than_done_says_so(trained, capsys):
    capsys.readouterr()
    assert main([*readme_command(RESUME), *SMALL, "--set", "training.steps=1"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the run is already at step 2 and training.steps is 1" in out
    assert "trained to step" not in out


def test_elapsed_s_keeps_counting_across_a_resume(trained):
    before = [json.loads(r) for r in (trained / "metrics.jsonl").read_text().splitlines()]
    assert main([*readme_command(RESUME), *SMALL, "--set", "training.steps=4"]) == 0
    after = [json.loads(r) for r in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in after] == [1, 2, 3, 4]
    elapsed = [r["elapsed_s"] for r in after]
    assert elapsed == sorted(elapsed) and elapsed[2] > before[-1]["elapsed_s"]


def test_eb_train_resume_reuses_the_runs_settings_and_names_changed_keys(workdir, monkeypatch, capsys):
    from ebsparse.drivers.eb_pipeline import EBRun

    tiny = ["model.ch=16", "model.num_groups=4", "data.image_size=8", "model.resolution=8",
            "model.attn_resolutions=[4]", "training.batch_size=8"]
    started = []

    def start_only(self, name, fn):  # the run records its settings, then "crashes" before a stage
        raise KeyboardInterrupt

    def record(self):
        started.append(self.config)
        return {}

    argv = ["eb-train", "configs/digits_eb.yaml", "--run-dir", "runs/eb", "--no-progress"]
    monkeypatch.setattr(EBRun, "_stage", start_only)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, *(a for kv in tiny for a in ("--set", kv))])
    (workdir / "runs" / "eb" / "stages").mkdir()
    monkeypatch.setattr(EBRun, "run", record)
    assert main([*argv, "--resume"]) == 0  # no --set retyped
    assert started[-1].model["ch"] == 16 and started[-1].data.image_size == 8
    capsys.readouterr()
    assert main([*argv, "--resume", "--set", "earlybird.eta=0.05", "--set", "model.ch=16"]) == 2
    err = capsys.readouterr().err
    assert "earlybird.eta 0.1 -> 0.05" in err and "model.ch" not in err and len(started) == 1


def test_a_set_typo_is_blamed_on_the_set(workdir, capsys):
    assert main(["train", "configs/digits.yaml", "--set", "training.lrr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "--set training.lrr=0.01: training: unknown keys ['lrr']" in err and "config file" not in err
    (workdir / "bad.yaml").write_text((workdir / "configs" / "digits.yaml").read_text().replace("lr: 0.001", "lrr: 1"))
    assert main(["train", "bad.yaml", "--set", "training.steps=2"]) == 2
    assert "config file 'bad.yaml'" in capsys.readouterr().err


def test_steps_break_exactness_only_where_they_set_the_sparsity_schedule():
    from ebsparse.diffusion.config import load_config
    from ebsparse.diffusion.trainer import resume_breaking_changes

    def changes(path, *extra):
        old = load_config(path, list(extra))
        return resume_breaking_changes(old.to_dict(), load_config(path, [*extra, "training.steps=9"]))

    assert changes("configs/digits.yaml") == {}
    assert changes("configs/digits_rigl.yaml", "sparsity.prune_fraction_decay=constant") == {}
    assert "training.steps" in changes("configs/digits_rigl.yaml", "sparsity.prune_fraction_decay=cosine")
    assert changes("configs/digits_rigl.yaml", "sparsity.prune_fraction_decay=cosine", "sparsity.end_step=5") == {}
