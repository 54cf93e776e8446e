"""The embedded demo learns: after a short run the domain FID of samples falls well below that of an
untrained model. Several minutes on 2 cores, hence slow."""

import pytest
import torch

from ebsparse.diffusion.trainer import Trainer, sample_images
from ebsparse.metrics.domain_fid import digits_fid


@pytest.mark.slow
def test_short_digits_training_improves_domain_fid(digits_config_path, tmp_path):
    from ebsparse.diffusion.config import load_config

    cfg = load_config(digits_config_path, ["training.steps=600", "training.ckpt_every=0", "training.sample_every=0",
                                           "sampling.timesteps=20"])
    trainer = Trainer(cfg, tmp_path / "run")
    untrained = sample_images(trainer.model.eval(), cfg, 256, seed=0)
    trainer.fit(progress=False)
    model = trainer.model
    trainer.ema.copy_to(model)
    trained = sample_images(model.eval(), cfg, 256, seed=0)
    before, after = digits_fid(untrained), digits_fid(trained)
    assert torch.isfinite(trained).all()
    assert after < 0.5 * before, (before, after)
