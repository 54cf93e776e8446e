"""Latent diffusion end to end on tiny models: the autoencoder (quantiser against a brute-force
reference, pickle-free round trip, frozen load), the latent cache (written once, reused, stale
detected), ``ebsparse train`` / ``sample`` with ``model.type: ldm`` decoding to images of the data's
shape, and sparse-to-sparse training of the LDM U-Net."""

import json
from pathlib import Path

import pytest
import torch

from ebsparse.cli import main
from ebsparse.diffusion import latents as latents_mod
from ebsparse.diffusion.autoencoder_training import AutoencoderExperiment, train_autoencoder
from ebsparse.diffusion.config import ExperimentConfig
from ebsparse.diffusion.latents import cached_latents, load_autoencoder, save_autoencoder
from ebsparse.diffusion.schedule import make_betas
from ebsparse.diffusion.spaces import LatentSpace, sample_space
from ebsparse.diffusion.trainer import Trainer, sample_images
from ebsparse.models.autoencoder import Autoencoder, AutoencoderConfig, VectorQuantizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY_AE = dict(in_channels=1, out_ch=1, resolution=16, ch=8, ch_mult=[1, 2, 4], num_res_blocks=1, z_channels=3,
               embed_dim=3, n_embed=16, num_groups=4)


def tiny_experiment(regularizer="vq", steps=3):
    return AutoencoderExperiment.from_dict({
        "autoencoder": {**TINY_AE, "regularizer": regularizer},
        "data": {"type": "digits", "image_size": 16, "channels": 1},
        "training": {"batch_size": 8, "steps": steps, "restart_every": 2, "log_every": 1, "scale_images": 64},
    })


def ldm_config(autoencoder_dir, **training):
    return ExperimentConfig.from_dict({
        "model": {"type": "ldm", "autoencoder": str(autoencoder_dir),
                  "unet": {"image_size": 4, "in_channels": 3, "out_channels": 3, "model_channels": 8,
                           "channel_mult": [1, 2], "attention_resolutions": [2], "num_res_blocks": 1,
                           "num_head_channels": 8, "num_groups": 4}},
        "diffusion": {"beta_schedule": "quad", "beta_start": 0.0015, "beta_end": 0.0195, "loss_reduction": "mean"},
        "data": {"type": "digits", "image_size": 16, "channels": 1},
        "training": {"batch_size": 8, "steps": 3, "log_every": 1, "ckpt_every": 3, "sample_every": 0, **training},
        "sampling": {"timesteps": 3, "num_samples": 4},
    })


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    torch.set_num_threads(1)
    train_autoencoder(tiny_experiment(), out, progress=False)
    return out


def test_quantizer_picks_the_nearest_code_with_a_straight_through_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(7, 3)
    torch.nn.init.normal_(vq.embedding.weight)
    z = torch.randn(2, 3, 5, 3, requires_grad=True)
    z_q, loss, codes = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.stack([((vq.embedding.weight - v) ** 2).sum(1).argmin() for v in flat]).reshape(2, 5, 3)
    assert torch.equal(codes, brute)
    torch.testing.assert_close(z_q, vq.embedding.weight[brute].permute(0, 3, 1, 2))
    z_q.sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight through
    expected = 1.25 * ((z.detach() - z_q.detach()) ** 2).mean()  # (1 + beta) * distance, beta = 0.25
    torch.testing.assert_close(loss, expected)


def test_decode_quantizes_pre_quantisation_latents():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(**TINY_AE)).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 3, 4, 4)
    snapped = model.quantize.lookup(model.quantize.codes(z))
    torch.testing.assert_close(model.decode(z), model.decoder(model.post_quant_conv(snapped)))
    assert not torch.equal(z, snapped)


def test_kl_variant_encodes_the_mean_and_trains():
    exp = tiny_experiment("kl", steps=2)
    model = Autoencoder(exp.autoencoder)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(model.encode(x), model.encode(x))  # the posterior mean, no sampling
    assert model.encode(x).shape == (3, 3, 4, 4) and not hasattr(model, "quantize")
    rec, kl, _ = model(x)
    assert rec.shape == x.shape and kl.item() >= 0


def test_autoencoder_round_trip_without_pickle_and_frozen(tmp_path):
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(**TINY_AE)).eval()
    path = save_autoencoder(tmp_path, model, 1.7, {"note": "test"})
    assert path.name == "autoencoder.safetensors" and json.loads(path.with_suffix(".json").read_text())["scale_factor"] == 1.7
    with open(path, "rb") as f:  # a safetensors file: a little-endian header length, then JSON
        assert f.read(9)[8:9] == b"{"
    loaded = load_autoencoder(tmp_path)
    assert loaded.scale_factor == 1.7 and not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.model.decode(loaded.model.encode(x)), model.decode(model.encode(x)))
    with pytest.raises(FileNotFoundError, match="missing.*train-autoencoder"):
        load_autoencoder(tmp_path / "missing")


def test_latent_cache_written_once_reused_and_stale_detected(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_autoencoder(tmp_path, Autoencoder(AutoencoderConfig(**TINY_AE)), 1.0)
    data = ldm_config(tmp_path).data
    calls, log = [], []
    real = latents_mod.encode_dataset
    monkeypatch.setattr(latents_mod, "encode_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    z1, y1, path = cached_latents(load_autoencoder(tmp_path), data, log=log.append)
    assert z1.shape == (1797, 3, 4, 4) and y1.shape == (1797,) and path.is_file() and len(calls) == 1
    z2, _, _ = cached_latents(load_autoencoder(tmp_path), data, log=log.append)
    assert len(calls) == 1 and torch.equal(z1, z2)
    other = Autoencoder(AutoencoderConfig(**TINY_AE))  # another autoencoder in the same folder
    save_autoencoder(tmp_path, other, 1.0)
    z3, _, _ = cached_latents(load_autoencoder(tmp_path), data, log=log.append)
    assert len(calls) == 2 and "is stale" in log[-2] and not torch.equal(z1, z3)
    torch.testing.assert_close(z3[:5], other.eval().encode(torch.stack([latents_mod.build_dataset(data)[i][0]
                                                                         for i in range(5)])))


def test_mismatched_data_and_missing_autoencoder_are_named(tmp_path, autoencoder_dir):
    cfg = ldm_config(autoencoder_dir)
    cfg.data.image_size = 32
    with pytest.raises(ValueError, match="data.image_size=32 .*model.unet.image_size is 4"):
        sample_space(cfg)
    cfg = ldm_config(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Trainer(cfg, tmp_path / "run")


def test_train_and_sample_ldm_decode_to_images(tmp_path, autoencoder_dir):
    cfg = ldm_config(autoencoder_dir)
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.dataset.images.shape == (1797, 3, 4, 4)
    scale = load_autoencoder(autoencoder_dir).scale_factor
    assert abs(float(trainer.dataset.images.std()) - 1.0) < 0.2 and scale > 0  # 1/std measured on 64 images
    out = trainer.fit(progress=False)
    assert out["step"] == 3
    space = sample_space(cfg)
    assert isinstance(space, LatentSpace) and not space.clip_denoised and space.shape == (3, 4, 4)
    images = trainer.sample(5)
    assert images.shape == (5, 1, 16, 16) and torch.isfinite(images).all()
    raw = sample_images(trainer.model.eval(), cfg, 5, raw=True)
    assert raw.shape == (5, 3, 4, 4)
    torch.testing.assert_close(space.to_images(raw), load_autoencoder(autoencoder_dir).model.decode(raw / scale))


def test_ldm_trains_sparse_to_sparse(tmp_path, autoencoder_dir, monkeypatch):
    from ebsparse.drivers import sparse_train
    from ebsparse.drivers.sparse_train import run_sparse_train

    fid_samples = []  # the domain FID would train a digits classifier: check what it is given instead
    monkeypatch.setattr(sparse_train, "fid_of_samples", lambda trainer, ema_model=None: fid_samples.append(trainer.sample(2)) or None)

    d = ldm_config(autoencoder_dir).to_dict()
    d["sparsity"] = {"method": "rigl", "sparsity": 0.5, "distribution": "erk", "update_every": 2,
                     "prune_fraction": 0.1}
    out = run_sparse_train(ExperimentConfig.from_dict(d), tmp_path / "rigl", progress=False, measure=False)
    row = out["row"]
    assert row["method"] == "rigl" and row["mask updates"] >= 1 and 0.4 < row["params (rel.)"] < 0.9
    assert fid_samples[0].shape == (2, 1, 16, 16)  # decoded images, as the pixel models' FID gets


def test_ldm_linear_schedule_is_quad():
    """LDM's "linear" betas are linspace(sqrt(b0), sqrt(b1)) ** 2: our "quad"."""
    betas = make_betas("quad", 0.0015, 0.0195, 1000)
    assert betas[0].item() == pytest.approx(0.0015) and betas[-1].item() == pytest.approx(0.0195)
    steps = betas.sqrt().diff()
    torch.testing.assert_close(steps, torch.full_like(steps, (0.0195**0.5 - 0.0015**0.5) / 999))


@pytest.mark.parametrize("name", ["celebahq", "lsun_bedrooms", "imagenette"])
def test_paper_configs_name_what_the_user_must_provide(name, tmp_path, monkeypatch, capsys):
    from ebsparse.diffusion.autoencoder_training import load_autoencoder_config
    from ebsparse.diffusion.config import load_config
    from ebsparse.models import LDMUNetConfig

    cfg = load_config(CONFIGS / f"{name}_ldm.yaml")
    assert LDMUNetConfig.from_dict(cfg.model["unet"]) == LDMUNetConfig()  # the paper's U-Net
    assert (cfg.training.batch_size, cfg.training.lr, cfg.training.weight_decay, cfg.sampling.timesteps) == \
        (12, 2.4e-5, 0.01, 100)
    ae = load_autoencoder_config(CONFIGS / "autoencoder" / f"{name}_vq.yaml").autoencoder
    assert (ae.factor, ae.embed_dim, ae.n_embed) == (4, 3, 8192)
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(CONFIGS / f"{name}_ldm.yaml"), "--no-progress"]) == 2
    assert f"runs/{name}_vq/autoencoder.safetensors' not found" in capsys.readouterr().err
    assert main(["train-autoencoder", str(CONFIGS / "autoencoder" / f"{name}_vq.yaml"), "--no-progress"]) == 2
    assert f"image folder '{cfg.data.root}' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((CONFIGS / "autoencoder").glob("*.yaml")), ids=lambda p: p.name)
def test_autoencoder_configs_load_and_round_trip(path):
    from ebsparse.diffusion.autoencoder_training import load_autoencoder_config

    exp = load_autoencoder_config(path)
    assert AutoencoderExperiment.from_dict(exp.to_dict()).to_dict() == exp.to_dict()
    with pytest.raises(ValueError, match="autoencoder.n_embed must be a positive int"):
        load_autoencoder_config(path, ["autoencoder.n_embed=0"])
