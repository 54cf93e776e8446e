"""The ebsparse command: train → sample → fid on the embedded config; errors exit with status 2."""

import subprocess
import sys

import pytest

from ebsparse.cli import COMMANDS, build_parser, main, register

TINY = ["--set", "training.steps=2", "--set", "training.batch_size=4", "--set", "training.log_every=1",
        "--set", "sampling.timesteps=3", "--no-progress", "--threads", "1"]


def test_train_sample_fid(digits_config_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(digits_config_path), "--run-dir", str(run), *TINY]) == 0
    assert (run / "checkpoint.safetensors").is_file() and (run / "checkpoint.json").is_file()
    assert main(["train", str(digits_config_path), "--run-dir", str(run), *TINY,
                 "--set", "training.steps=3", "--resume"]) == 0
    assert "trained to step 3" in capsys.readouterr().out
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--num", "5", "--out", str(out), "--grid", str(tmp_path / "g.png"),
                 "--timesteps", "2", "--batch-size", "3"]) == 0
    assert len(list(out.glob("*.png"))) == 5 and (tmp_path / "g.png").is_file()
    assert main(["fid", str(out), "--domain", "digits"]) == 0
    assert "digits domain FID:" in capsys.readouterr().out


def test_user_errors_exit_2_with_one_line(tmp_path, digits_config_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", str(digits_config_path), "--run-dir", str(tmp_path), "--set", "training.lr=-1"]) == 2
    assert "training.lr must be > 0" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "none")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nonsense"])


def test_commands_are_a_registry():
    assert {"train", "sample", "fid"} <= set(COMMANDS)
    with pytest.raises(ValueError, match="already registered"):
        register("train", "again", lambda p: None, lambda a: 0)


def test_python_dash_m_lists_the_commands():
    res = subprocess.run([sys.executable, "-m", "ebsparse", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "train" in res.stdout and "sample" in res.stdout
