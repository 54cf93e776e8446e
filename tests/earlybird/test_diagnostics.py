"""The x0-norm drift diagnostic: the x0 prediction DDIM makes at each of its steps, and its plot."""

import pytest
import torch

from ebsparse.diffusion.config import DiffusionConfig
from ebsparse.diffusion.samplers import timestep_sequence
from ebsparse.diffusion.schedule import NoiseSchedule
from ebsparse.drivers.eb_diagnostics import save_line_plot, x0_norm_trajectory


def test_x0_norm_follows_the_ddim_trajectory():
    schedule = NoiseSchedule(DiffusionConfig())
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    # eps = 0: x0 = x_t / sqrt(abar_t) and the next x = sqrt(abar_next) * x0, so every x0 is x_T / sqrt(abar_first)
    ts, norms = x0_norm_trajectory(lambda x, t: torch.zeros_like(x), schedule, x_T, 5, "quad")
    assert ts == sorted(timestep_sequence(1000, 5, "quad"), reverse=True)
    first = float(schedule.alpha_bar(torch.tensor([ts[0]]))[0])
    expected = float((x_T / first ** 0.5).flatten(1).pow(2).mean(1).sqrt().mean())
    assert norms == pytest.approx([expected] * 5, rel=1e-4)


def test_line_plot_is_written_and_rejects_empty_series(tmp_path):
    from PIL import Image

    p = save_line_plot({"a": ([800, 400, 0], [3.0, 1.0, 0.7]), "b": ([800, 0], [0.8, 0.7])}, tmp_path / "f.png",
                       "title", "t", "RMS", reference=0.75)
    assert Image.open(p).size == (680, 360)
    with pytest.raises(ValueError, match="at least one series"):
        save_line_plot({"a": ([], [])}, tmp_path / "g.png", "t", "x", "y")
