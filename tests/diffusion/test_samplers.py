"""DDIM/DDPM samplers: timestep sequences, determinism, exactness with an oracle denoiser."""

import pytest
import torch

from ebsparse.diffusion.samplers import ddim_sample, ddpm_sample, timestep_sequence
from ebsparse.diffusion.schedule import DiffusionConfig, NoiseSchedule


def test_sequences():
    assert timestep_sequence(1000, 100, "uniform") == list(range(0, 1000, 10))
    quad = timestep_sequence(1000, 100, "quad")
    assert len(quad) == 100 and quad[0] == 0 and max(quad) == 800  # TA-EB's largest sampled t
    assert quad == sorted(quad)
    with pytest.raises(ValueError, match="skip_type"):
        timestep_sequence(1000, 10, "cosine")
    with pytest.raises(ValueError, match="timesteps"):
        timestep_sequence(1000, 0)


def _oracle(x0_star, sched):
    """The exact epsilon for a data distribution concentrated at one point x0_star."""
    def fn(x, t):
        ab = sched.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0_star) / (1 - ab).sqrt()
    return fn


@pytest.mark.parametrize("skip_type", ["uniform", "quad"])
def test_ddim_recovers_the_point_mass(skip_type):
    sched = NoiseSchedule()
    x0_star = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 1.6 - 0.8
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    out = ddim_sample(_oracle(x0_star, sched), sched, x_T, timesteps=20, skip_type=skip_type)
    assert torch.allclose(out, x0_star.expand_as(out), atol=1e-8)


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
def test_ddpm_recovers_the_point_mass(var_type):
    sched = NoiseSchedule(DiffusionConfig(var_type=var_type))
    x0_star = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 1.6 - 0.8
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    out = ddpm_sample(_oracle(x0_star, sched), sched, x_T, timesteps=50, generator=g)
    assert torch.allclose(out, x0_star.expand_as(out), atol=1e-8)


def _toy_model(x, t):
    return torch.tanh(x) * (t.view(-1, 1, 1, 1).float() / 1000)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    sched = NoiseSchedule()
    x_T = torch.randn(2, 1, 4, 4)
    a = ddim_sample(_toy_model, sched, x_T, timesteps=10, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(_toy_model, sched, x_T, timesteps=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = ddim_sample(_toy_model, sched, x_T, timesteps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    d = ddim_sample(_toy_model, sched, x_T, timesteps=10, eta=1.0, generator=torch.Generator().manual_seed(2))
    e = ddim_sample(_toy_model, sched, x_T, timesteps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(c, d) and torch.equal(c, e)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(_toy_model, sched, x_T, eta=-1.0)


def test_model_call_is_a_function_of_x_and_t():
    """A timestep-routed set of models stands in for one model (the TA-EB use)."""
    sched = NoiseSchedule()
    seen = {"low": set(), "high": set()}

    def routed(x, t):
        key = "low" if int(t[0]) < 440 else "high"
        seen[key].add(int(t[0]))
        return _toy_model(x, t)

    x_T = torch.randn(1, 1, 4, 4)
    out = ddim_sample(routed, sched, x_T, timesteps=100, skip_type="quad")
    ref = ddim_sample(_toy_model, sched, x_T, timesteps=100, skip_type="quad")
    assert torch.equal(out, ref)
    assert max(seen["low"]) < 440 <= min(seen["high"]) and max(seen["high"]) == 800


def test_class_conditional_dit_samples_through_the_same_path():
    from ebsparse.diffusion.config import ExperimentConfig
    from ebsparse.diffusion.trainer import sample_images
    from ebsparse.models import build_model

    spec = {"type": "dit", "input_size": 8, "patch_size": 4, "in_channels": 1, "hidden_size": 32, "depth": 1,
            "num_heads": 2, "num_classes": 3}
    cfg = ExperimentConfig.from_dict({"model": spec, "data": {"image_size": 8},
                                      "sampling": {"timesteps": 3, "num_samples": 2}})
    torch.manual_seed(0)
    model = build_model(spec).eval()
    a = sample_images(model, cfg, 5, seed=1, batch_size=2)
    b = sample_images(model, cfg, 5, seed=1, batch_size=5)
    assert a.shape == (5, 1, 8, 8) and torch.allclose(a, b, atol=1e-5)
