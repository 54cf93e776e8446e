"""The README's latent-diffusion commands, as written (tiny models appended): train the autoencoder,
train the LDM on its latents, sample decoded images (the sparse-to-sparse line runs in
tests/diffusion/test_latents.py with a tiny model and no FID)."""

from PIL import Image

from ebsparse.cli import main

from .conftest import readme_command

TINY_AE = ["--set", "training.steps=2", "--set", "training.batch_size=4", "--set", "training.scale_images=32",
           "--set", "autoencoder.ch=8", "--set", "autoencoder.num_groups=4", "--no-progress", "--threads", "1"]
TINY_LDM = ["--set", "training.steps=2", "--set", "training.batch_size=4", "--set", "model.unet.model_channels=8",
            "--set", "model.unet.num_groups=4", "--set", "model.unet.num_head_channels=8",
            "--set", "sampling.timesteps=2", "--no-progress", "--threads", "1"]


def test_autoencoder_then_ldm_then_samples_of_the_datas_size(workdir, capsys):
    assert main([*readme_command("ebsparse train-autoencoder configs/autoencoder/digits_vq.yaml"), *TINY_AE]) == 0
    assert (workdir / "runs/digits_vq/autoencoder.safetensors").is_file()
    assert Image.open(workdir / "runs/digits_vq/reconstructions.png").size[0] >= 16 * 64
    assert main([*readme_command("ebsparse train-autoencoder configs/autoencoder/digits_vq.yaml"), *TINY_AE]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*readme_command("ebsparse train configs/digits_ldm.yaml"), *TINY_LDM]) == 0
    out = capsys.readouterr().out
    assert "encoding 1797 images" in out and "trained to step 2" in out
    assert main([*readme_command("ebsparse sample runs/digits_ldm"), "--num", "3", "--timesteps", "2"]) == 0
    assert Image.open(workdir / "ldm.png").size[0] >= 64
    pngs = sorted((workdir / "runs/digits_ldm/samples/eval").glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (32, 32)  # decoded: the data's 32x32 grey images
    # a second run of the same data reuses the latent cache; the README's sparse-to-sparse line parses
    argv = readme_command("ebsparse train configs/digits_ldm.yaml --run-dir runs/digits_ldm_rigl")
    assert "sparsity.method=rigl" in argv
    assert main(["train", "configs/digits_ldm.yaml", "--run-dir", "runs/again", *TINY_LDM]) == 0
    assert "encoding" not in capsys.readouterr().out
