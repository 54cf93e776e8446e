"""Schedule values against closed forms; timestep sampling; losses."""

import math

import pytest
import torch
from hypothesis import given, strategies as st

from ebsparse.diffusion.losses import epsilon_loss, sample_timesteps
from ebsparse.diffusion.schedule import DiffusionConfig, NoiseSchedule


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule(DiffusionConfig())


def test_linear_betas(sched):
    b = sched.betas
    assert b.shape == (1000,) and b.dtype == torch.float64
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


@given(t=st.integers(0, 999))
def test_alpha_bar_closed_form(t):
    sched = NoiseSchedule()
    expected = math.exp(sum(math.log(1 - (1e-4 + i * (0.02 - 1e-4) / 999)) for i in range(t + 1)))
    assert sched.alpha_bar(torch.tensor([t])).item() == pytest.approx(expected, rel=1e-10)
    if t > 0:
        ab, abp = sched.alphas_cumprod[t].item(), sched.alphas_cumprod[t - 1].item()
        beta = sched.betas[t].item()
        assert sched.posterior_variance[t].item() == pytest.approx(beta * (1 - abp) / (1 - ab), rel=1e-12)


def test_alpha_bar_edges_and_errors(sched):
    assert sched.alpha_bar(torch.tensor([-1])).item() == 1.0
    assert sched.alpha_bar(torch.tensor([999])).item() == pytest.approx(4.0358e-5, rel=1e-3)  # DDPM's abar_T
    with pytest.raises(ValueError, match=r"\[-1, 999\]"):
        sched.alpha_bar(torch.tensor([1000]))
    with pytest.raises(TypeError):
        sched.alpha_bar(torch.tensor([1.0]))


def test_reverse_variances(sched):
    t = torch.arange(1000)
    large = NoiseSchedule(DiffusionConfig(var_type="fixedlarge")).reverse_log_variance(t).exp()
    small = NoiseSchedule(DiffusionConfig(var_type="fixedsmall")).reverse_log_variance(t).exp()
    assert torch.allclose(large[1:], sched.betas[1:])
    assert torch.allclose(small[1:], sched.posterior_variance[1:])
    assert (small[1:] < large[1:]).all()


def test_q_sample_moments(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.5, dtype=torch.float64)
    t = torch.full((20000,), 300)
    xt = sched.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = sched.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(ab), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, abs=0.02)


@given(n=st.integers(1, 64), low=st.integers(0, 500), width=st.integers(0, 499), seed=st.integers(0, 100))
def test_antithetic_timesteps(n, low, width, seed):
    high = low + width
    g = torch.Generator().manual_seed(seed)
    t = sample_timesteps(n, 1000, low=low, high=high, generator=g)
    assert t.shape == (n,) and int(t.min()) >= low and int(t.max()) <= high
    half = n // 2 + 1
    pairs = t[half:]
    assert torch.equal(pairs, low + high - t[: pairs.numel()])


def test_timestep_errors():
    with pytest.raises(ValueError, match="low <= high"):
        sample_timesteps(4, 1000, low=10, high=5)
    with pytest.raises(ValueError, match="n must be"):
        sample_timesteps(0, 1000)


def test_epsilon_loss_oracle_and_reductions(sched):
    x0 = torch.randn(3, 1, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 999])
    assert epsilon_loss(lambda x, tt: noise, sched, x0, t, noise).item() == 0.0
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    total = epsilon_loss(zero, sched, x0, t, noise, "sum")
    mean = epsilon_loss(zero, sched, x0, t, noise, "mean")
    assert total.item() == pytest.approx(mean.item() * 16, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        epsilon_loss(zero, sched, x0, t, noise, "max")


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta_schedule="cosine"), "beta_schedule"), (dict(var_type="learned"), "var_type"),
    (dict(beta_start=0.1, beta_end=0.01), "betas"), (dict(num_timesteps=1), "num_timesteps"),
])
def test_bad_diffusion_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionConfig(**kwargs)
