"""The README's diffusers block as written: train a diffusers UNet2DModel, prune it with tied widths,
export it, and load the folder with ``UNet2DModel.from_pretrained`` (offline)."""

import shlex

import pytest
import torch

from ebsparse.cli import main

from .conftest import README, SMALL

diffusers = pytest.importorskip("diffusers")


def _block() -> list[list[str]]:
    text = README.read_text()
    start = text.index("```bash\nebsparse train configs/digits_diffusers_unet.yaml")
    block = text[start + len("```bash\n"): text.index("```", start + 8)]
    return [shlex.split(line.split(" # ")[0])[1:] for line in block.splitlines() if line.strip()]


def test_train_prune_and_export_a_diffusers_unet_as_the_readme_writes_it(workdir, capsys):
    train, eb_train, prune, export = _block()
    assert eb_train[0] == "eb-train"  # run by tests/models/test_diffusers_type.py at a tiny size
    assert main([*train, *SMALL]) == 0
    assert main(prune) == 0
    assert main(export) == 0
    out = workdir / export[export.index("--diffusers") + 1]
    assert f"wrote {out.relative_to(workdir)} (UNet2DModel.from_pretrained loads it)" in capsys.readouterr().out
    unet = diffusers.UNet2DModel.from_pretrained(out, local_files_only=True)
    from ebsparse.models import build_model
    from ebsparse.pruning import load_pruned

    ours, _ = load_pruned(workdir / prune[prune.index("--out") + 1], build_model)
    assert list(unet.config.block_out_channels) == [32, 48]  # level 1 pruned 0.3 of 64 (GroupNorm 8 parts)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, ours.eval()(x, t))
