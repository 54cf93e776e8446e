"""Save/load without pickle: JSON recipe + safetensors, rebuilt from the base config, atomic writes."""

import json

import pytest
import torch

from ebsparse.models import build_model
from ebsparse.pruning import (
    PruningConfig,
    PruningError,
    load_pruned,
    load_recipe,
    prune,
    save_pruned,
)
from ebsparse.pruning.recipe import RECIPE_FILE, WEIGHTS_FILE

SPEC = {"type": "ddpm_unet", "in_channels": 3, "out_channels": 3, "resolution": 8, "ch": 16, "ch_mult": [1, 2],
        "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0, "num_groups": 4}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    inputs = (torch.randn(1, 3, 8, 8), torch.tensor([7]))
    cfg = PruningConfig(pruning_ratio=0.5, round_to=8)
    result = prune(model, inputs, cfg)
    out = tmp_path_factory.mktemp("pruned")
    save_pruned(out, result.model, result.mask, base=SPEC, example_inputs=inputs, config=cfg)
    return out, result


def test_round_trip_rebuilds_the_same_model_without_pickle(saved, monkeypatch):
    out, result = saved

    def no_pickle(*a, **k):
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    model, recipe = load_pruned(out, build_model)
    x = (torch.randn(2, 3, 8, 8), torch.tensor([1, 500]))
    with torch.no_grad():
        torch.testing.assert_close(model(*x), result.model.eval()(*x), rtol=0, atol=0)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in result.model.state_dict().items()}
    assert recipe["base"] == SPEC and recipe["pruning"]["round_to"] == 8
    assert sorted(p.name for p in out.iterdir()) == sorted([RECIPE_FILE, WEIGHTS_FILE])  # no temp files left
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / RECIPE_FILE).stat().st_mode) == 0o666 & ~umask


def test_recipe_is_plain_json_with_kept_channels(saved):
    out, result = saved
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert [(g["key"], g["size"]) for g in recipe["groups"]] == result.mask.signature()
    first = recipe["groups"][0]
    assert first["keep"] == torch.nonzero(result.mask[first["key"]]).flatten().tolist()


def test_recipe_for_another_base_model_is_rejected(saved, tmp_path):
    out, _ = saved
    recipe = json.loads((out / RECIPE_FILE).read_text())
    recipe["base"] = {**SPEC, "ch_mult": [1, 2, 2]}
    (tmp_path / RECIPE_FILE).write_text(json.dumps(recipe))
    (tmp_path / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes())
    with pytest.raises(PruningError, match="does not match the model's dependency groups"):
        load_pruned(tmp_path, build_model)


def test_foreign_weights_are_rejected(saved, tmp_path):
    out, _ = saved
    (tmp_path / RECIPE_FILE).write_text((out / RECIPE_FILE).read_text())
    data = bytearray((out / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(PruningError, match="SHA-256"):
        load_pruned(tmp_path, build_model)
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PruningError, match="expected format"):
        load_recipe(tmp_path)


def test_failed_save_leaves_the_old_files(saved, tmp_path, monkeypatch):
    out, result = saved
    for name in (RECIPE_FILE, WEIGHTS_FILE):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    import safetensors.torch

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(tmp_path, result.model, result.mask, base=SPEC,
                    example_inputs=(torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long)),
                    config=PruningConfig(pruning_ratio=0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RECIPE_FILE, WEIGHTS_FILE])
    for name in (RECIPE_FILE, WEIGHTS_FILE):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_our_dit_round_trip_keeps_the_pruned_pos_embed(tmp_path):
    """ebsparse DiT: hidden width pruned (its fixed pos_embed with it), replayed from the recipe."""
    spec = {"type": "dit", "input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 1,
            "num_heads": 4, "num_classes": 10}
    torch.manual_seed(0)
    model = build_model(spec).eval()
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([1, 3]))
    cfg = PruningConfig(pruning_ratio=0.5, on_unsupported="skip")
    result = prune(model, inputs, cfg)
    save_pruned(tmp_path, result.model, result.mask, base=spec, example_inputs=inputs, config=cfg)
    again, _ = load_pruned(tmp_path, build_model)
    assert again.pos_embed.shape[-1] == 32 == again.x_embedder.proj.out_channels
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(*inputs), result.model.eval()(*inputs), rtol=0, atol=0)
