"""Importance: magnitude as the reference scores, Taylor from a timestep range, EMA weights."""

import pytest
import torch
from torch import nn

from ebsparse.diffusion.losses import epsilon_loss, sample_timesteps
from ebsparse.diffusion.schedule import NoiseSchedule
from ebsparse.pruning import (
    PruningConfig,
    PruningError,
    build_groups,
    compute_importance,
    magnitude_importance,
    taylor_importance,
    taylor_loss,
)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_magnitude_is_group_mean_of_producer_and_consumer_l2():
    torch.manual_seed(0)
    m = _MLP()
    groups = build_groups(m, (torch.randn(1, 3),))
    assert [g.key for g in groups] == ["fc1"]
    s = magnitude_importance(m, groups)["fc1"]
    w1, w2 = m.fc1.weight.detach(), m.fc2.weight.detach()
    expect = ((w1 ** 2).sum(1) + (w2 ** 2).sum(0)) / 2  # averaged over the 2 layers; biases unused
    torch.testing.assert_close(s, (expect / expect.mean()).float())


def test_ema_weights_are_scored(tiny_unet, unet_inputs):
    groups = build_groups(tiny_unet, unet_inputs)
    ema = {k: v * torch.linspace(0.5, 1.5, v.shape[0]).view(-1, *[1] * (v.ndim - 1)) if v.ndim else v
           for k, v in tiny_unet.state_dict().items()}
    cfg = PruningConfig(importance="magnitude")
    raw = compute_importance(tiny_unet, groups, cfg)
    with_ema = compute_importance(tiny_unet, groups, cfg, ema_state=ema)
    ref = type(tiny_unet)(tiny_unet.config)
    ref.load_state_dict(ema)
    expect = magnitude_importance(ref, groups)
    key = "temb.dense.0"
    torch.testing.assert_close(with_ema[key], expect[key])
    assert not torch.allclose(with_ema[key], raw[key])
    with pytest.raises(PruningError, match="ema_state"):
        compute_importance(tiny_unet, groups, cfg, ema_state={"nope": torch.zeros(1)})


def test_taylor_uses_only_the_given_timesteps(tiny_unet, unet_inputs):
    groups = build_groups(tiny_unet, unet_inputs)
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    schedule = NoiseSchedule()
    seen_low, seen_high = [], []
    low = taylor_importance(tiny_unet, groups, taylor_loss(x0, schedule, (0, 260), torch.Generator().manual_seed(0),
                                                           seen_t=seen_low), batches=2)
    high = taylor_importance(tiny_unet, groups, taylor_loss(x0, schedule, (440, 999), torch.Generator().manual_seed(0),
                                                            seen_t=seen_high), batches=2)
    assert len(seen_low) == 8 and all(0 <= t <= 260 for t in seen_low)
    assert all(440 <= t <= 999 for t in seen_high)
    assert seen_low[3] == 260 - seen_low[0]  # antithetic: n//2 + 1 draws t, then lo + hi - t
    key = "down.0.block.0.conv1"
    assert low[key].shape == (tiny_unet.config.ch,) and torch.isfinite(low[key]).all()
    assert not torch.allclose(low[key], high[key])
    assert all(p.grad is None for p in tiny_unet.parameters()), "scoring must not leave gradients behind"


def test_taylor_needs_a_loss(tiny_unet, unet_inputs):
    groups = build_groups(tiny_unet, unet_inputs)
    with pytest.raises(PruningError, match="loss_fn"):
        compute_importance(tiny_unet, groups, PruningConfig(importance="taylor"))
    with pytest.raises(PruningError, match="t_range"):
        taylor_loss(torch.zeros(1, 3, 4, 4), NoiseSchedule(), (10, 1000))


def test_taylor_loss_is_the_training_loss_with_the_trainers_timesteps(tiny_unet):
    """Pruning scores differentiate the very objective the trainer minimises: the same timestep draw
    (the reference's antithetic convention) and noise from the same generator state, the same loss."""
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    schedule = NoiseSchedule()
    seen = []
    got = taylor_loss(x0, schedule, (100, 400), torch.Generator().manual_seed(7), seen_t=seen)(tiny_unet)
    g = torch.Generator().manual_seed(7)
    t = sample_timesteps(4, 1000, antithetic=True, low=100, high=400, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert seen == t.tolist() and seen[3] == 500 - seen[0]
    torch.testing.assert_close(got, epsilon_loss(tiny_unet, schedule, x0, t, noise, "sum"))
