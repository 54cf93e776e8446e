"""Tiny Early-Bird settings: an 8x8 digits U-Net (ch 16) that trains a step in ~0.05 s on one thread."""

from pathlib import Path

import pytest

from ebsparse.diffusion.config import load_config

DEMO = Path(__file__).resolve().parents[2] / "configs" / "digits_eb.yaml"

TINY = [
    "data.image_size=8", "model.resolution=8", "model.ch=16", "model.ch_mult=[1,2]", "model.num_groups=4",
    "model.attn_resolutions=[4]", "training.batch_size=8", "training.warmup=0", "training.lr=0.003",
    "training.ckpt_every=2", "sampling.timesteps=2", "earlybird.eval_samples=4",
    # the demo's budgets are sized for 800 steps: here every method trains to the end of the run
    "earlybird.eb_budget=1.0", "earlybird.region_steps=null", "earlybird.region_budget=1.0",
]


def tiny_config(*extra: str):
    return load_config(DEMO, [*TINY, *extra])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(isolated_cache):
    yield
