"""Small models for the pruning tests: every one traces, prunes and runs in well under a second."""

from __future__ import annotations

import pytest
import torch

from tests.pruning.pruning_models import randomize, tiny_unet_config


@pytest.fixture
def tiny_unet():
    from ebsparse.models import DDPMUNet

    torch.manual_seed(0)
    return DDPMUNet(tiny_unet_config()).eval()


@pytest.fixture
def unet_inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 811]))


@pytest.fixture
def hf_unet():
    """diffusers UNet2DModel with the google/ddpm-cifar10-32 block layout, scaled down, built offline."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return randomize(UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8)).eval()


@pytest.fixture
def hf_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return randomize(DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10)).eval()


@pytest.fixture
def dit_inputs():
    g = torch.Generator().manual_seed(2)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 900]), torch.tensor([1, 3]))


@pytest.fixture
def our_dit():
    from ebsparse.models import DiT, DiTConfig

    torch.manual_seed(0)
    return randomize(DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2,
                                   num_heads=4, num_classes=10))).eval()


