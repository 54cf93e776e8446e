"""Fixtures for diffusion tests: a tiny config built from the embedded digits config."""

from pathlib import Path

import pytest

from ebsparse.diffusion.config import load_config

DIGITS = Path(__file__).resolve().parents[2] / "configs" / "digits.yaml"


@pytest.fixture
def digits_config_path() -> Path:
    return DIGITS


@pytest.fixture
def tiny_digits_config():
    """The embedded config with few, small steps and dropout on (so the global RNG matters on resume)."""
    return load_config(DIGITS, [
        "training.steps=6", "training.batch_size=8", "training.ckpt_every=3", "training.log_every=1",
        "training.sample_every=0", "training.warmup=2", "model.dropout=0.1", "training.ema_rate=0.9",
        "sampling.timesteps=5", "sampling.num_samples=4",
    ])


@pytest.fixture(autouse=True)
def _isolated_cache(isolated_cache):
    yield


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
