"""DDIM/DDPM samplers: timestep sequences, determinism, exactness with an oracle denoiser, and every step
against diffusers' DDIMScheduler / DDPMScheduler with an inexact (random linear) epsilon model."""

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


# --- step by step against diffusers' schedulers, with an inexact model ------------------------------
# The point-mass oracle above returns x0 at the last step whatever came before, so it cannot see a
# wrong noise coefficient or variance; a fixed random linear map as the epsilon model can.

def _linear_eps_model(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    w = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    seen = []

    def fn(x, t):
        seen.append(x.clone())
        flat = x.reshape(x.shape[0], -1) @ w
        return (flat * (0.5 + t.view(-1, 1).double() / 1000)).reshape(x.shape)
    return fn, seen


def _diffusers_twin(cls, sched, **kw):
    twin = cls(num_train_timesteps=sched.num_timesteps, trained_betas=sched.betas.numpy(), **kw)
    twin.alphas_cumprod = sched.alphas_cumprod.clone()  # float64, as ours (diffusers keeps float32)
    return twin


def _diffusers_trajectory(twin, model_fn, x_T, timesteps, step_kwargs):
    twin.set_timesteps(timesteps)
    x, out = x_T, [x_T]
    for t in twin.timesteps:
        eps = model_fn(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
        x = twin.step(eps, int(t), x, **step_kwargs()).prev_sample
        out.append(x)
    return out


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_step_by_step_with_an_inexact_model(eta):
    from diffusers import DDIMScheduler

    sched = NoiseSchedule()
    x_T = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours_fn, ours_seen = _linear_eps_model(x_T.shape[1:])
    out = ddim_sample(ours_fn, sched, x_T, timesteps=10, eta=eta, generator=torch.Generator().manual_seed(7))

    twin = _diffusers_twin(DDIMScheduler, sched, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                           timestep_spacing="leading")
    noise = torch.Generator().manual_seed(7)  # the same draws, in the same order, as our sampler's

    def kwargs():
        v = torch.randn(x_T.shape, generator=noise, dtype=x_T.dtype) if eta > 0 else None
        return {"eta": eta, "variance_noise": v}

    ref_fn, _ = _linear_eps_model(x_T.shape[1:])
    ref = _diffusers_trajectory(twin, ref_fn, x_T, 10, kwargs)
    assert len(ours_seen) == 10
    for k, x in enumerate(ours_seen + [out]):
        assert torch.allclose(x, ref[k], rtol=1e-9, atol=1e-9), f"step {k}: max diff {(x - ref[k]).abs().max():.3g}"


@pytest.mark.parametrize("var_type,diffusers_var", [("fixedlarge", "fixed_large"), ("fixedsmall", "fixed_small")])
def test_ddpm_matches_diffusers_step_by_step_with_an_inexact_model(var_type, diffusers_var):
    from diffusers import DDPMScheduler

    sched = NoiseSchedule(DiffusionConfig(var_type=var_type))
    x_T = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ours_fn, ours_seen = _linear_eps_model(x_T.shape[1:], seed=1)
    out = ddpm_sample(ours_fn, sched, x_T, timesteps=20, generator=torch.Generator().manual_seed(9))

    twin = _diffusers_twin(DDPMScheduler, sched, variance_type=diffusers_var, clip_sample=True,
                           clip_sample_range=1.0, steps_offset=0, timestep_spacing="leading")
    noise = torch.Generator().manual_seed(9)
    ref_fn, _ = _linear_eps_model(x_T.shape[1:], seed=1)
    ref = _diffusers_trajectory(twin, ref_fn, x_T, 20, lambda: {"generator": noise})
    assert len(ours_seen) == 20
    for k, x in enumerate(ours_seen + [out]):
        assert torch.allclose(x, ref[k], rtol=1e-9, atol=1e-9), f"step {k}: max diff {(x - ref[k]).abs().max():.3g}"


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_samples_of_any_rank(sampler):
    """Latents and stroke sequences are not 4-D: a (B, L, 3) batch is sampled exactly as the same
    numbers shaped (B, L, 3, 1) are, by a model that works elementwise."""
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=50))
    model = lambda x, t: 0.3 * x + 0.01 * t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # noqa: E731
    x_T = torch.randn(4, 7, 3, generator=torch.Generator().manual_seed(0))
    seq = sampler(model, sched, x_T, timesteps=10, generator=torch.Generator().manual_seed(1))
    img = sampler(model, sched, x_T[..., None], timesteps=10, generator=torch.Generator().manual_seed(1))
    assert seq.shape == x_T.shape
    torch.testing.assert_close(seq, img[..., 0], rtol=0, atol=0)


def test_ddpm_clips_only_when_told():
    """Images clip x0 to [-1, 1]; latents and sequences (``clip_denoised=False``) must not be clipped."""
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=20))
    x_T = torch.full((2, 5), 8.0)
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731: predicts x0 = x / sqrt(alpha_bar)
    clipped = ddpm_sample(zero_eps, sched, x_T, generator=torch.Generator().manual_seed(0))
    free = ddpm_sample(zero_eps, sched, x_T, generator=torch.Generator().manual_seed(0), clip_denoised=False)
    assert clipped.abs().max() < 2 and free.min() > 4
