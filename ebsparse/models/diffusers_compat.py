"""Third-party models as this project calls them: ``model(x, t) -> eps`` tensors.

diffusers' models return output objects and take keyword arguments; pruning, counting, benchmarks and
the samplers want plain positional calls. The configs are the published ones, written out so the
models build offline (``from_pretrained`` would download).
"""

from __future__ import annotations

from torch import nn

__all__ = ["DDPM_CIFAR10_32", "UNet2DCall", "ddpm_cifar10_32"]

#: google/ddpm-cifar10-32's UNet2DModel configuration (35.75M params, 6.07G MACs with our counter).
DDPM_CIFAR10_32 = dict(
    act_fn="silu", attention_head_dim=None, block_out_channels=[128, 256, 256, 256], center_input_sample=False,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, in_channels=3, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-6,
    norm_num_groups=32, out_channels=3, sample_size=32, time_embedding_type="positional",
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])


class UNet2DCall(nn.Module):
    """``UNet2DModel`` called as ``(x, t) -> tensor``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, t):
        return self.inner(x, t).sample


def ddpm_cifar10_32() -> UNet2DCall:
    """The google/ddpm-cifar10-32 U-Net (random weights), built offline; needs ``diffusers``."""
    from diffusers import UNet2DModel

    return UNet2DCall(UNet2DModel(**DDPM_CIFAR10_32))
