"""The router as one artifact: JSON + safetensors, rebuilt from per-region pruning recipes, no pickle."""

import json

import pytest
import torch

from ebsparse.earlybird.regions import PRESETS
from ebsparse.earlybird.router import TimestepRouter, load_router, save_router
from ebsparse.models import build_model
from ebsparse.pruning import PruningConfig, prune



@pytest.fixture
def region_models():
    from ebsparse.models import example_inputs

    spec = {"type": "ddpm_unet", "in_channels": 1, "out_channels": 1, "resolution": 8, "ch": 16, "ch_mult": [1, 2],
            "num_groups": 4, "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}
    torch.manual_seed(0)
    dense = build_model(spec).eval()
    inputs = example_inputs(spec)
    models, masks, configs = [], [], []
    for k, ratio in enumerate((0.0, 0.25, 0.5)):
        torch.manual_seed(k)
        base = build_model(spec).eval()
        if ratio == 0:
            models.append(base)
            masks.append(None)
            configs.append(None)
            continue
        cfg = PruningConfig(pruning_ratio=ratio)
        r = prune(base, inputs, cfg)
        models.append(r.model)
        masks.append(r.mask)
        configs.append(cfg)
    return spec, inputs, models, masks, configs, dense


def test_round_trip_same_outputs_no_pickle(tmp_path, region_models):
    from safetensors.torch import load_file

    spec, inputs, models, masks, configs, _ = region_models
    router = TimestepRouter(models, PRESETS["cifar10-3"]).eval()
    path = save_router(tmp_path / "router", router, spec, inputs, masks, configs, extra={"note": "test"})
    assert sorted(p.name for p in (tmp_path / "router").iterdir()) == ["router.json", "router.safetensors"]
    doc = json.loads(path.read_text())
    assert doc["regions"][1] == {"low": 240, "high": 460, "pruning_ratio": 0.6} and doc["extra"] == {"note": "test"}
    assert doc["models"][0]["groups"] is None and doc["models"][2]["pruning"]["pruning_ratio"] == 0.5
    assert set(load_file(str(tmp_path / "router" / "router.safetensors"))) == set(router.state_dict())
    loaded, _ = load_router(tmp_path / "router", build_model)
    assert not loaded.training
    for a, b in zip(router.state_dict().items(), loaded.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([3, 250, 999, 600, 100])
    torch.testing.assert_close(loaded(x, t), router(x, t), rtol=0, atol=0)


def test_tampered_weights_are_refused(tmp_path, region_models):
    from safetensors.torch import load_file, save_file

    spec, inputs, models, masks, configs, _ = region_models
    save_router(tmp_path, TimestepRouter(models, PRESETS["cifar10-3"]), spec, inputs, masks, configs)
    w = load_file(str(tmp_path / "router.safetensors"))
    w[next(iter(w))] += 1
    save_file(w, str(tmp_path / "router.safetensors"))
    with pytest.raises(ValueError, match="SHA-256"):
        load_router(tmp_path, build_model)


def test_save_needs_one_recipe_per_region(tmp_path, region_models):
    spec, inputs, models, masks, configs, _ = region_models
    with pytest.raises(ValueError, match="one per region"):
        save_router(tmp_path, TimestepRouter(models, PRESETS["cifar10-3"]), spec, inputs, masks[:2], configs)
    with pytest.raises(FileNotFoundError):
        load_router(tmp_path / "nothing", build_model)
