"""Keyword example inputs (diffusers' ``sample=``, ``timestep=``, ``class_labels=``) go through tracing,
shrinking, the run check and the recipe; anything that is neither a tuple nor a mapping is refused
before tracing, naming ``example_inputs``."""

import pytest
import torch

from ebsparse.pruning import PruningConfig, PruningError, load_pruned, plan, prune, save_pruned


def _hf_unet_inputs():
    g = torch.Generator().manual_seed(4)
    return {"sample": torch.randn(1, 3, 8, 8, generator=g), "timestep": torch.tensor([7])}


def test_prune_a_diffusers_unet_with_keyword_inputs(hf_unet, tmp_path):
    inputs = _hf_unet_inputs()
    result = prune(hf_unet, inputs, PruningConfig(pruning_ratio=0.5))
    kept = sum(p.numel() for p in result.model.parameters())
    assert kept < 0.5 * sum(p.numel() for p in hf_unet.parameters())
    assert result.model(**inputs).sample.shape == (1, 3, 8, 8)

    def build(spec):
        from diffusers import UNet2DModel

        return UNet2DModel(**spec)

    save_pruned(tmp_path / "p", result.model, result.mask, base=dict(hf_unet.config), example_inputs=inputs,
                config=result.config)
    loaded, recipe = load_pruned(tmp_path / "p", build)
    assert set(recipe["example_inputs"]) == {"sample", "timestep"}
    torch.testing.assert_close(loaded(**inputs).sample, result.model(**inputs).sample)


def test_keyword_and_positional_inputs_give_the_same_plan(tiny_unet, unet_inputs):
    x, t = unet_inputs
    by_position = plan(tiny_unet, (x, t), PruningConfig(pruning_ratio=0.3))
    by_name = plan(tiny_unet, {"x": x, "t": t}, PruningConfig(pruning_ratio=0.3))
    assert by_position.mask.to_json() == by_name.mask.to_json()


@pytest.mark.parametrize("bad, message", [
    ("x", "got str"),
    ({0: torch.zeros(1)}, "argument names"),
    (None, "got NoneType"),
])
def test_other_inputs_are_refused_up_front(tiny_unet, bad, message):
    with pytest.raises(PruningError, match=f"example_inputs: .*{message}"):
        prune(tiny_unet, bad, PruningConfig(pruning_ratio=0.3))
