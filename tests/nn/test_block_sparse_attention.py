"""Block-sparse attention as a drop-in: ebsparse's DiT and U-Net attention, diffusers' Attention
(U-Net and DiT) through BlockSparseAttnProcessor. A full layout computes what dense attention
computes; a sparse one what the reference computes with the layout's mask."""

from __future__ import annotations

import copy

import pytest
import torch

from ebsparse.formats.block_layout import local_layout
from ebsparse.models import DDPMUNet, DDPMUNetConfig, DiT, DiTConfig
from ebsparse.nn import use_block_sparse_attention
from ebsparse.ops import block_sparse_attention_reference
from tests.ops.helpers import runs_on


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def test_our_dit_full_layout_is_dense_and_local_is_the_reference():
    model = _randomize(DiT(DiTConfig(input_size=8, patch_size=1, in_channels=2, hidden_size=48, depth=2, num_heads=3,
                                     num_classes=4, learn_sigma=False)))
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 3])
    dense = model(x, t, y)
    sparse = copy.deepcopy(model)
    assert use_block_sparse_attention(sparse, torch.ones(4, 4, dtype=torch.bool), 16) == 2
    with runs_on("native", "block_attention"):
        torch.testing.assert_close(sparse(x, t, y), dense, atol=1e-5, rtol=1e-4)
    use_block_sparse_attention(sparse, local_layout(4, 0), 16)
    attn, h = sparse.blocks[0].attn, torch.randn(2, 64, 48)
    qkv = attn.qkv(h).reshape(2, 64, 3, 3, 16).permute(2, 0, 3, 1, 4)
    want = block_sparse_attention_reference(qkv[0], qkv[1], qkv[2], local_layout(4, 0), 16)
    torch.testing.assert_close(attn(h), attn.proj(want.transpose(1, 2).reshape(2, 64, 48)), atol=1e-5, rtol=1e-4)
    use_block_sparse_attention(sparse, None)
    torch.testing.assert_close(sparse(x, t, y), dense)


def test_our_unet_attention_block_sparse_over_pixels():
    model = _randomize(DDPMUNet(DDPMUNetConfig(in_channels=1, out_channels=1, resolution=8, ch=16, ch_mult=(1, 2),
                                               num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, num_groups=4)))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 600])
    dense = model(x, t)
    n = use_block_sparse_attention(model, lambda tokens: torch.ones(-(-tokens // 16), -(-tokens // 16),
                                                                    dtype=torch.bool), 16)
    assert n >= 1
    torch.testing.assert_close(model(x, t), dense, atol=1e-5, rtol=1e-4)
    use_block_sparse_attention(model, lambda tokens: local_layout(-(-tokens // 16), 0), 16)
    out = model(x, t)
    assert out.shape == dense.shape and not torch.allclose(out, dense, atol=1e-4)
    out.square().mean().backward()


@pytest.mark.parametrize("which", ["unet", "dit"])
def test_diffusers_processor(which):
    pytest.importorskip("diffusers")
    if which == "unet":
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        model = _randomize(UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                       layers_per_block=1, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                                       up_block_types=("UpBlock2D", "AttnUpBlock2D"), norm_num_groups=4,
                                       attention_head_dim=8))
        call = lambda m: m(x, t).sample  # noqa: E731
        x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 500])
    else:
        from diffusers import DiTTransformer2DModel

        torch.manual_seed(0)
        model = _randomize(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                                 out_channels=8, num_layers=2, sample_size=8, patch_size=1,
                                                 num_embeds_ada_norm=10))
        x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.tensor([1, 2])
        call = lambda m: m(x, timestep=t, class_labels=y).sample  # noqa: E731
    with torch.no_grad():
        dense = call(model)
        full = lambda tokens: torch.ones(-(-tokens // 16), -(-tokens // 16), dtype=torch.bool)  # noqa: E731
        assert use_block_sparse_attention(model, full, 16) >= 1
        with runs_on("native", "block_attention"):
            torch.testing.assert_close(call(model), dense, atol=1e-4, rtol=1e-4)
        local = lambda tokens: local_layout(-(-tokens // 16), 0)  # noqa: E731
        use_block_sparse_attention(model, local, 16, backend="native")
        native = call(model)
        use_block_sparse_attention(model, local, 16, backend="dense")
        torch.testing.assert_close(native, call(model), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(native, dense, atol=1e-4)
        use_block_sparse_attention(model, None)
        torch.testing.assert_close(call(model), dense)


def test_nothing_to_change_is_an_error():
    with pytest.raises(ValueError, match="no self-attention"):
        use_block_sparse_attention(torch.nn.Linear(2, 2), local_layout(2, 0), 16)
