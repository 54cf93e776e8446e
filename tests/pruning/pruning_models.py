"""Model helpers shared by the pruning tests (imported by conftest and the test modules)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_unet_config(**over):
    from ebsparse.models import DDPMUNetConfig

    base = dict(in_channels=3, out_channels=3, resolution=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(4,), dropout=0.0, num_groups=4)
    return DDPMUNetConfig(**{**base, **over})


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere (zero-initialised output layers would hide wrong wiring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


class HFDiTCall(nn.Module):
    """Positional (x, t, y) -> tensor wrapper, so the tracer and the tests call every model alike."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, y):
        return self.inner(x, timestep=t, class_labels=y).sample


from ebsparse.models.diffusers_compat import UNet2DCall as HFUNetCall  # noqa: E402,F401  (tests' name)
