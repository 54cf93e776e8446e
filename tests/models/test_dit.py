"""DiT: the paper's size table, adaLN-Zero init, shapes and conditioning."""

import pytest
import torch

from ebsparse.metrics.counting import count_macs, count_params
from ebsparse.models import DIT_SIZES, DiT, DiTConfig, build_model, dit_config


def _meta_counts(cfg: DiTConfig):
    with torch.device("meta"):
        model = DiT(cfg)
        x = torch.empty(1, cfg.in_channels, cfg.input_size, cfg.input_size)
        t = torch.zeros(1, dtype=torch.long)
        y = torch.zeros(1, dtype=torch.long)
    return count_params(model), count_macs(model, x, t, y)


def test_dit_xl2_matches_the_papers():
    params, macs = _meta_counts(dit_config("XL", 2))
    assert round(params / 1e6, 1) == 675.1  # includes the fixed position table, as the DiT paper counts
    assert round(macs.total / 1e9, 1) == 118.7  # DiT counts attention matmuls (Early-Bird Table 2 too)
    # without them it is "about 4G less": 28 blocks * 2 * 256^2 tokens * 1152
    assert macs.attention_macs == 28 * 2 * 256**2 * 1152
    assert 3.9e9 < macs.total - macs.macs < 4.4e9


@pytest.mark.parametrize("size, params_m", [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
def test_dit_sizes_match_the_paper_table(size, params_m):
    params, _ = _meta_counts(dit_config(size, 2))
    assert abs(params / 1e6 - params_m) / params_m < 0.01  # the paper quotes whole millions


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_larger_patches_cost_fewer_macs_with_the_same_blocks(patch):
    _, small_patch = _meta_counts(dit_config("S", 2))
    _, this = _meta_counts(dit_config("S", patch))
    tokens = (32 // patch) ** 2
    assert this.attention_macs == 12 * 2 * tokens**2 * 384
    if patch > 2:
        assert this.total < small_patch.total


def test_adaln_zero_init_outputs_zero_and_shapes():
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                          num_classes=10)).eval()
    x = torch.randn(3, 4, 8, 8)
    t, y = torch.tensor([1, 500, 999]), torch.tensor([0, 5, 9])
    out = model(x, t, y)
    assert out.shape == (3, 8, 8, 8)  # learn_sigma: eps and variance channels
    assert torch.count_nonzero(out) == 0  # adaLN-Zero: the final layer starts at zero
    torch.nn.init.normal_(model.final_layer.linear.weight)
    for block in model.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    a, b = model.eps(x, t, y), model.eps(x, t, torch.tensor([1, 6, 3]))
    assert a.shape == x.shape
    assert not torch.allclose(a, b)  # class conditioning reaches the output


def test_bad_dit_configs():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiTConfig(input_size=30, patch_size=4)
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig(hidden_size=100, num_heads=16)
    with pytest.raises(ValueError, match="size"):
        dit_config("M", 2)
    with pytest.raises(ValueError, match="patch_size"):
        dit_config("S", 3)
    assert sorted(DIT_SIZES) == ["B", "L", "S", "XL"]
    with torch.device("meta"):
        model = build_model({"type": "dit", "size": "S", "patch_size": 4, "input_size": 16})
    assert model.config.depth == 12 and model.config.patch_size == 4 and model.config.input_size == 16


@pytest.mark.parametrize("backend", ["native", "dense"])
def test_blocks_take_the_adaln_ops_unless_observed(backend, monkeypatch):
    """On the CPU in eager mode a DiT's blocks and final layer run layer_norm_modulate and
    gated_residual (same outputs and gradients as ATen's composition); with a hook on a norm (what
    torch-pruning's tracer and MAC counting add) or under a global hook they run ATen's ops, so the
    hooks fire and the MACs are the same."""
    from ebsparse.backends import trace
    from ebsparse.backends.extension import extension_error
    from ebsparse.nn import adaln

    if backend == "native" and extension_error() is not None:
        pytest.skip(str(extension_error()))
    monkeypatch.setattr(adaln, "BACKEND", backend)
    adaln._resolved.clear()
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=24, depth=2, num_heads=2, num_classes=5)
    for p in model.parameters():  # past the adaLN-Zero init, so every gate and shift matters
        torch.nn.init.normal_(p, std=0.2)
    x, t, y = torch.randn(3, 3, 8, 8), torch.randint(0, 1000, (3,)), torch.tensor([0, 4, 2])

    def run():
        model.zero_grad()
        out = model(x, t, y, generator=torch.Generator().manual_seed(1))  # the same label dropout
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    with trace() as calls:
        fused_out, fused_grads = run()
    ran = {(op, phase, name) for op, phase, name in calls}
    for op in ("layer_norm_modulate", "gated_residual", "residual_norm_modulate"):
        assert {(op, "forward", backend), (op, "backward", backend)} <= ran, ran

    def forwards(calls, op):
        return sum(o == op and phase == "forward" for o, phase, _ in calls)

    # per block: norm1 alone, the attention's gated add with norm2, the MLP's gated add; the final norm
    assert (forwards(calls, "layer_norm_modulate"), forwards(calls, "residual_norm_modulate"),
            forwards(calls, "gated_residual")) == (2 + 1, 2, 2)

    seen = []
    hook = model.blocks[0].norm1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with trace() as calls:  # block 0 runs ATen's ops, block 1 and the final layer still the fused ones
        aten_out, aten_grads = run()
    hook.remove()
    assert seen == [torch.Size([3, 16, 24])]
    assert (forwards(calls, "layer_norm_modulate"), forwards(calls, "residual_norm_modulate")) == (1 + 1, 1)
    torch.testing.assert_close(fused_out, aten_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(fused_grads, aten_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    one = (x[:1], t[:1], y[:1])
    counted = count_macs(model, *one)  # hooks every LayerNorm: ATen's path, the norms counted
    assert {n for n in counted.by_module if "norm" in n} == {"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1",
                                                             "blocks.1.norm2", "final_layer.norm_final"}
    assert counted.by_module["blocks.0.norm1"] == 16 * 24
