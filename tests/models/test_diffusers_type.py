"""``model.type: diffusers``: diffusers' UNet2DModel, UNet2DConditionModel and DiTTransformer2DModel
built from a config or a local folder, trained, pruned (widths tied for export), trained sparse, and
written back as folders diffusers' ``from_pretrained`` loads and a ``DDPMPipeline`` samples from."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

diffusers = pytest.importorskip("diffusers")

from ebsparse.diffusion.config import ExperimentConfig  # noqa: E402
from ebsparse.models import build_model, example_inputs  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_diffusers_unet.yaml"

UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[16, 32], layers_per_block=1,
            down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
            norm_num_groups=4, attention_head_dim=None)
MODELS = {
    "UNet2DModel": {"class": "UNet2DModel", "config": UNET},
    "UNet2DConditionModel": {"class": "UNet2DConditionModel", "num_classes": 10, "class_dropout_prob": 0.5,
                             "config": dict(UNET, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                                            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=16,
                                            attention_head_dim=8)},
    "DiTTransformer2DModel": {"class": "DiTTransformer2DModel",
                              "config": dict(num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=2,
                                             num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)},
}


def tiny(model: dict | None = None, **sections) -> ExperimentConfig:
    """The digits diffusers config at 8x8, batch 8, with ``model`` as the model section."""
    d = yaml.safe_load(CONFIG.read_text())
    d["model"] = {"type": "diffusers", **copy.deepcopy(model or MODELS["UNet2DModel"])}
    d["data"]["image_size"] = 8
    d["training"].update(batch_size=8, warmup=0, steps=4, ckpt_every=4, log_every=1, sample_every=0, lr=0.003)
    d["sampling"].update(timesteps=2, num_samples=4)
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v}
    return ExperimentConfig.from_dict(d)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("change, error, match", [
    (lambda m: m.pop("class"), ValueError, r"model\.class=None: expected one of"),
    (lambda m: m.update({"class": "UNet3DConditionModel"}), ValueError, r"model\.class='UNet3DConditionModel'"),
    (lambda m: m.update(pretrained="/x"), ValueError, r"exactly one of model\.config .* model\.pretrained"),
    (lambda m: m.pop("config"), ValueError, r"exactly one of model\.config"),
    (lambda m: m.update(config=[1]), ValueError, r"model\.config: expected a mapping"),
    (lambda m: m["config"].update(blocks=2), ValueError, r"model\.config: \['blocks'\] are not UNet2DModel arguments"),
    (lambda m: m.update(num_classes=10), ValueError, r"model\.num_classes .* are for UNet2DConditionModel"),
    (lambda m: m.update(extra=1), ValueError, r"model: unknown keys \['extra'\]"),
    (lambda m: m["config"].update(block_out_channels=[16]), ValueError, r"model\.config: diffusers' UNet2DModel refused"),
    (lambda m: m["config"].update(sample_size=[8, 16]), ValueError, r"model\.config: sample_size=\[8, 16\].*square"),
    (lambda m: m["config"].update(class_embed_type="timestep"), ValueError, r"class_embed_type='timestep'"),
    (lambda m: m.update(config=None, pretrained="/nonexistent/unet"), FileNotFoundError,
     r"model\.pretrained='/nonexistent/unet': no such folder"),
])
def test_bad_model_sections_are_errors_naming_the_key(change, error, match):
    model = copy.deepcopy(MODELS["UNet2DModel"])
    change(model)
    with pytest.raises(error, match=match):
        tiny(model)


def test_bad_conditional_sections_and_data_mismatches_name_the_keys(tmp_path):
    cond = copy.deepcopy(MODELS["UNet2DConditionModel"])
    cond["config"]["cross_attention_dim"] = [16, 16]
    with pytest.raises(ValueError, match="cross_attention_dim must be one int"):
        tiny(cond)
    with pytest.raises(ValueError, match=r"model\.num_classes: expected a positive integer"):
        tiny({**MODELS["UNet2DConditionModel"], "num_classes": 0})
    with pytest.raises(ValueError, match=r"data\.image_size=16 does not match model\.config\.sample_size=8"):
        tiny(data={"image_size": 16})
    with pytest.raises(ValueError, match=r"data\.channels=3 does not match model\.config\.in_channels=1"):
        tiny(data={"channels": 3})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        tiny({"class": "UNet2DModel", "pretrained": str(tmp_path / "empty")})


# --- build, train, sample --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_class_builds_trains_and_samples(tmp_path, name):
    from ebsparse.diffusion.trainer import Trainer, sample_images
    from ebsparse.models.diffusers_models import DiffusersModel

    cfg = tiny(MODELS[name])
    trainer = Trainer(cfg, tmp_path / "run")
    model = trainer.model
    assert isinstance(model, DiffusersModel) and type(model.inner).__name__ == name
    assert model.class_conditional == (name != "UNet2DModel")
    inputs = example_inputs(cfg.model, batch=2)
    assert len(inputs) == (3 if model.class_conditional else 2) and model(*inputs).shape == (2, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = trainer.fit(progress=False)
    assert out["step"] == 4 and torch.isfinite(torch.tensor(out["loss"]))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("inner.") for k in changed)
    if name == "UNet2DConditionModel":
        assert "context_embedding.weight" in changed  # the label context is learned
    x = sample_images(model.eval(), cfg, 3, seed=0)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_labels_condition_the_models_that_take_them():
    for name in ("UNet2DConditionModel", "DiTTransformer2DModel"):
        cfg = tiny(MODELS[name])
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        if name == "DiTTransformer2DModel":  # adaLN-Zero starts at zero: give the output layers weights
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
        a, b = model.eps(x, t, torch.tensor([1, 1])), model.eps(x, t, torch.tensor([7, 7]))
        assert not torch.allclose(a, b), name
        with pytest.raises(ValueError, match="is class-conditional"):
            model(x, t)


def test_unet2d_condition_label_dropout_draws_from_the_given_generator():
    model = build_model(tiny(MODELS["UNet2DConditionModel"]).model).train()
    y = torch.arange(8) % 10
    ctx = [model.context(y, 8, torch.device("cpu"), torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(ctx[0], ctx[1]) and not torch.equal(ctx[0], ctx[2])
    null = model.context_embedding.weight[10]
    dropped = (ctx[0][:, 0] == null).all(1)
    assert 0 < int(dropped.sum()) < 8  # class_dropout_prob 0.5


def test_pretrained_folder_builds_the_saved_model_and_config_validation_loads_no_weights(tmp_path, monkeypatch):
    cfg = tiny()
    torch.manual_seed(3)
    source = build_model(cfg.model).eval()
    source.inner.save_pretrained(tmp_path / "unet")
    spec = {"class": "UNet2DModel", "pretrained": str(tmp_path / "unet")}
    loads = []
    real = diffusers.UNet2DModel.from_pretrained.__func__
    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(k) or real(cls, *a, **k)))
    pcfg = tiny(spec)  # validated on the meta device: the config is read, no weights loaded
    assert loads == []
    model = build_model(pcfg.model).eval()
    assert loads == [{"local_files_only": True}]
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 999])
    assert torch.equal(model(x, t), source(x, t))
    with pytest.raises(ValueError, match="holds a UNet2DModel, not the model.class='DiTTransformer2DModel'"):
        tiny({"class": "DiTTransformer2DModel", "pretrained": str(tmp_path / "unet")})


# --- pruning ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_class_prunes_and_counts(name):
    from ebsparse.metrics.counting import count_macs, count_params
    from ebsparse.pruning import PruningConfig, prune

    cfg = tiny(MODELS[name])
    model = build_model(cfg.model).eval()
    result = prune(model, example_inputs(cfg.model), PruningConfig(pruning_ratio=0.5))
    meta = example_inputs(cfg.model, device="meta")
    macs = [count_macs(copy.deepcopy(m).to("meta"), *meta).macs for m in (model, result.model)]
    assert count_params(result.model) < 0.6 * count_params(model) and macs[1] < 0.6 * macs[0]
    assert result.model(*example_inputs(cfg.model, batch=2)).shape == (2, 1, 8, 8)


def test_diffusers_widths_tie_each_level_and_keep_level_zero_and_whole_heads():
    from ebsparse.pruning import PruningConfig, prune

    for head_dim, ratio in ((None, 0.3), (8, 0.4), (8, 0.3)):  # 24, 20 (two heads of 8: 16), 24
        spec = {"type": "diffusers", "class": "UNet2DModel", "config": dict(UNET, attention_head_dim=head_dim)}
        model = build_model(spec).eval()
        unet = prune(model, example_inputs(spec), PruningConfig(pruning_ratio=ratio, widths="diffusers")).model.inner
        level1 = [unet.down_blocks[1].resnets[0].conv1.out_channels, unet.down_blocks[1].resnets[0].conv2.out_channels,
                  unet.up_blocks[0].resnets[1].conv1.out_channels, unet.up_blocks[0].upsamplers[0].conv.out_channels,
                  unet.mid_block.resnets[1].conv1.out_channels]
        # the reference's rule on the residual width (32 channels, GroupNorm(4)): C - int(C (1 - r))
        # pruned, evenly from the 4 parts, so the kept count rounds up to a multiple of 4
        kept = 32 - (32 - int(32 * (1 - ratio))) // 4 * 4
        assert set(level1) == {kept}, (head_dim, ratio, level1)
        attn = unet.mid_block.attentions[0]
        d = head_dim or kept
        assert (attn.to_q.out_features, attn.heads) == ((kept // d) * d, kept // d)
        assert unet.conv_in.out_channels == 16 and unet.down_blocks[0].resnets[0].conv1.out_channels == 16
        assert unet.time_embedding.linear_1.out_features == unet.time_embedding.linear_2.out_features < 64


@pytest.mark.parametrize("widths, ratio, exported", [
    ([16, 16, 32], 0.5, [16, 16, 16 + 4]),  # levels 0 and 1 share an identity skip: both whole
    ([16, 32, 32], 0.3, [16, 24, 24]),
    ([16, 32, 32], 0.5, [16, 20, 20]),      # 16 would equal level 0's width: one part more
])
def test_tied_widths_export_whatever_the_layout(tmp_path, widths, ratio, exported):
    import json

    from ebsparse.models.diffusers_export import export_diffusers
    from ebsparse.pruning import PruningConfig, prune

    n = len(widths)
    spec = {"type": "diffusers", "class": "UNet2DModel",
            "config": dict(UNET, block_out_channels=widths, down_block_types=["DownBlock2D"] * (n - 1) + ["AttnDownBlock2D"],
                           up_block_types=["AttnUpBlock2D"] + ["UpBlock2D"] * (n - 1))}
    model = build_model(spec).eval()
    pruned = prune(model, example_inputs(spec), PruningConfig(pruning_ratio=ratio, widths="diffusers")).model
    folder = export_diffusers(pruned, tmp_path / "unet")
    assert json.loads((folder / "config.json").read_text())["block_out_channels"] == exported


def test_diffusers_widths_need_a_unet2dmodel():
    from ebsparse.pruning import PruningConfig, PruningError, prune

    cfg = tiny(MODELS["DiTTransformer2DModel"])
    with pytest.raises(PruningError, match="widths='diffusers' ties the widths of a diffusers UNet2DModel"):
        prune(build_model(cfg.model), example_inputs(cfg.model), PruningConfig(pruning_ratio=0.5, widths="diffusers"))


# --- export ---------------------------------------------------------------------------------------

def _ddpm_samples(folder: Path) -> torch.Tensor:
    unet = diffusers.UNet2DModel.from_pretrained(folder, local_files_only=True)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=3, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    return torch.from_numpy(images)


def test_eb_train_writes_pruned_unet2dmodel_folders_that_from_pretrained_loads_and_ddpm_samples(tmp_path):
    """The issue's goal: an Early-Bird ticket of a diffusers UNet2DModel, saved by eb-train, loads
    with ``UNet2DModel.from_pretrained(dir)``, computes what our model does, and samples in a pipeline."""
    from ebsparse.drivers.eb_pipeline import EBRun
    from ebsparse.pruning import load_pruned

    cfg = tiny(earlybird={"pseudo_epoch_steps": 2, "queue_length": 2, "max_search_steps": 4, "eb_budget": 1.0,
                          "baselines": [], "eval_samples": 4, "pruning_ratio": 0.5, "widths": "diffusers"},
               training={"steps": 6, "ema_rate": 0.5})
    EBRun(cfg, tmp_path / "eb", progress=False, fid=False, log=lambda s: None).run()
    ours, _ = load_pruned(tmp_path / "eb" / "models" / "eb", build_model)
    folder = tmp_path / "eb" / "diffusers" / "eb"
    unet = diffusers.UNet2DModel.from_pretrained(folder, local_files_only=True)
    # level 0 whole; level 1 at 0.5 would keep 16, level 0's width, which leaves no shortcut conv in
    # a config's down block: it keeps one GroupNorm part more (20)
    assert list(unet.config.block_out_channels) == [16, 20]
    assert ours.inner.down_blocks[1].resnets[0].conv1.out_channels == 20
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 400, 999])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, ours.eval()(x, t))
    images = _ddpm_samples(folder)
    assert images.shape == (2, 8, 8, 1) and torch.isfinite(images).all()


def test_export_refuses_a_pruned_unet_no_config_describes_and_writes_nothing(tmp_path):
    from ebsparse.models.diffusers_export import export_diffusers
    from ebsparse.pruning import PruningConfig, prune

    cfg = tiny()
    pruned = prune(build_model(cfg.model).eval(), example_inputs(cfg.model), PruningConfig(pruning_ratio=0.5)).model
    with pytest.raises(ValueError, match="not described by any UNet2DModel config.*time_embedding.linear_1.weight"):
        export_diffusers(pruned, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="expected a model of model.type 'diffusers'"):
        export_diffusers(torch.nn.Linear(2, 2), tmp_path / "out")


def test_sparse_run_exports_dense_weights_with_zeros_through_the_command(tmp_path, capsys):
    from ebsparse.cli import main
    from ebsparse.drivers.checkpoints import model_from_checkpoint
    from ebsparse.drivers.sparse_train import run_sparse_train
    from ebsparse.nn import densify

    cfg = tiny(sparsity={"method": "rigl", "sparsity": 0.8, "update_every": 2})
    run_sparse_train(cfg, tmp_path / "run", progress=False, measure=False)
    assert main(["export", str(tmp_path / "run"), "--diffusers", str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    ours = model_from_checkpoint(tmp_path / "run")[0]
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "out", local_files_only=True)
    masked = ours.inner.down_blocks[1].resnets[0].conv1
    weight = unet.down_blocks[1].resnets[0].conv1.weight
    assert 0.05 < float(masked.mask.float().mean()) < 0.5
    assert (weight[~masked.mask] == 0).all() and torch.equal(weight[masked.mask], masked.weight[masked.mask])
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 700])
    with torch.no_grad():
        got = unet(x, t).sample
        torch.testing.assert_close(got, ours(x, t), rtol=1e-5, atol=1e-5)  # our sparse kernels: other rounding
        densify(ours)
        assert torch.equal(got, ours(x, t))  # the same dense ops on the same weights
    assert main(["export", str(tmp_path / "run"), "--diffusers", str(tmp_path / "out")]) == 2
    assert "exists; pass overwrite=True (--force)" in capsys.readouterr().err


def test_cifar10_config_is_google_ddpm_cifar10_32_and_counts_as_the_papers_unet():
    from ebsparse.diffusion.config import load_config
    from ebsparse.metrics.counting import count_macs, count_params
    from ebsparse.models.diffusers_compat import DDPM_CIFAR10_32

    cfg = load_config(CONFIG.parent / "cifar10_diffusers.yaml")
    assert cfg.model["config"] == {**DDPM_CIFAR10_32, "dropout": 0.1}  # the DDIM code base's training dropout
    assert cfg.algorithms["earlybird"]["widths"] == "diffusers"
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert round(count_params(model) / 1e6, 2) == 35.75
    assert round(count_macs(model, *example_inputs(cfg.model, device="meta")).macs / 1e9, 2) == 6.07


def test_widths_settings_are_checked_by_name():
    from ebsparse.earlybird.config import EarlyBirdConfig
    from ebsparse.pruning import PruningConfig, PruningError

    with pytest.raises(PruningError, match=r"PruningConfig\.widths must be one of \('groups', 'diffusers'\)"):
        PruningConfig(widths="uniform")
    with pytest.raises(ValueError, match=r"earlybird\.widths must be one of"):
        EarlyBirdConfig(widths="level")


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("name", ["UNet2DConditionModel", "DiTTransformer2DModel"])
def test_label_dropout_keeps_resume_bit_identical(tmp_path, name):
    """UNet2DConditionModel drops labels with the trainer's generator, diffusers' DiT with the global
    RNG; both are in the checkpoint, so a run killed after a checkpoint resumes to the same bits."""
    from ebsparse.diffusion.trainer import Trainer

    cfg = tiny(MODELS[name], training={"ckpt_every": 2})
    whole = Trainer(cfg, tmp_path / "whole")
    whole.fit(progress=False)

    def crash(trainer, stats):
        if trainer.step == 3:
            raise Crash()

    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "split").fit(progress=False, callback=crash)
    resumed = Trainer(cfg, tmp_path / "split")
    resumed.fit(resume=True, progress=False)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
