"""Training step of the CIFAR-10 DDPM U-Net, dense vs channel-pruned (CPU, batch 8, forward + backward).

Providers: ``dense``, ``pruned-0.3``, ``pruned-0.5`` (magnitude pruning, the reference's per-group
rule), for this project's DDPM U-Net (dropout 0.1, as the CIFAR-10 config trains it) and for
``diffusers``' ``UNet2DModel`` in the google/ddpm-cifar10-32 configuration (no dropout: the model
the issue's 3.18x torch-pruning reference was measured on), each also in ``channels_last`` memory
format, which is what recovers part of the gap between the MAC ratio and the wall-clock ratio on
CPU (see ebsparse/pruning/README.md). "useful GFLOP" is 3 x 2 x MACs x batch (forward, grad-input
and grad-weight) with the papers' counter.

Run: ``pytest bench/test_pruning_speed.py --benchmark`` (bench/settings.py lists the environment
variables). Every row is timed alternately with the contiguous dense step of the same family
(minimum of 9 rounds each; the notes give the rounds and both medians, so the spread shows) and
its speed-up is against that paired dense time; channels_last dense is a row of its own.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from bench import settings
from bench.timing import paired

BATCH = settings.UNET_BATCH
RATIOS = [0.0, 0.3, 0.5]
ROUNDS = 9
MODELS = ["ebsparse", "diffusers"]


def _dense(family: str) -> torch.nn.Module:
    if family == "diffusers":
        pytest.importorskip("diffusers")
        from diffusers import UNet2DModel

        from ebsparse.models.diffusers_compat import DDPM_CIFAR10_32, UNet2DCall

        c = settings.UNET_CHANNELS
        return UNet2DCall(UNet2DModel(**{**DDPM_CIFAR10_32, "block_out_channels": [c, 2 * c, 2 * c, 2 * c],
                                         "norm_num_groups": settings.UNET_NORM_GROUPS}))
    from ebsparse.models import DDPMUNet, DDPMUNetConfig

    return DDPMUNet(DDPMUNetConfig(ch=settings.UNET_CHANNELS, num_groups=settings.UNET_NORM_GROUPS))


@functools.cache
def _model(family: str, ratio: float):
    from ebsparse.metrics.counting import count_macs
    from ebsparse.pruning import PruningConfig, prune

    torch.manual_seed(0)
    dense = _dense(family)
    inputs = (torch.randn(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    model = dense if ratio == 0 else prune(dense, inputs, PruningConfig(pruning_ratio=ratio)).model
    macs = count_macs(copy.deepcopy(model).to("meta"), *(t.to("meta") for t in inputs)).macs
    return model, macs


def _train_step(model, channels_last: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    eps = torch.randn(BATCH, 3, 32, 32, generator=g)
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        model.zero_grad(set_to_none=True)
        loss = torch.mean((model(x, t) - eps) ** 2)
        loss.backward()

    return step


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"ratio-{r}")
@pytest.mark.parametrize("family", MODELS)
def test_unet_cifar10_train_step(benchmark, family, ratio, channels_last):
    model, macs = _model(family, ratio)
    provider = ("dense" if ratio == 0 else f"pruned-{ratio}") + ("-channels_last" if channels_last else "")
    paired(benchmark, _train_step(model, channels_last), _train_step(_model(family, 0.0)[0], False),
           group=f"{family} cifar10 U-Net train step b{BATCH}", provider=provider,
           rounds=settings.rounds(ROUNDS), gflop=3 * 2 * macs * BATCH / 1e9)
