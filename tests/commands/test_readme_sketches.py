"""The README's ChiroDiff lines, as written: train the KanjiVG demo (a few steps on a few characters),
then sample it to PNGs and raw strokes; the QuickDraw line names the missing folder."""

import numpy as np

from ebsparse.cli import main

from .conftest import readme_command

TINY = ["--set", "training.steps=2", "--set", "training.batch_size=4", "--set", "training.sample_every=2",
        "--set", "data.limit=8", "--set", "model.hidden_size=8", "--set", "sampling.timesteps=2",
        "--set", "sampling.num_samples=4", "--no-progress"]


def test_kanjivg_demo_trains_and_samples(workdir, capsys):
    assert main([*readme_command("ebsparse train configs/kanjivg_demo.yaml"), *TINY]) == 0
    run = workdir / "runs" / "kanjivg_demo"
    assert (run / "samples" / "step_0000002.png").is_file()
    argv = readme_command("ebsparse sample runs/kanjivg_demo")
    assert main([*argv, "--num", "4", "--threads", "1"]) == 0
    assert (workdir / "kanji.png").is_file()
    assert len(list((run / "real").glob("*.png"))) == 4
    with np.load(run / "samples" / "eval" / "sequences.npz") as f:
        assert f["sequences"].shape == (4, 48, 3)


def test_quickdraw_line_names_the_missing_folder(workdir, capsys):
    assert main(readme_command("ebsparse train configs/quickdraw_chirodiff.yaml")) == 2
    assert "data.root '/path/to/quickdraw' is not a directory" in capsys.readouterr().err
