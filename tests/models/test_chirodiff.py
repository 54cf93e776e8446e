"""ChiroDiff: the sparse-to-sparse paper's parameter count and GRU share, shapes, config errors."""

import pytest
import torch

from ebsparse.models import ChiroDiff, ChiroDiffConfig, build_model


def test_paper_parameter_count():
    model = build_model({"type": "chirodiff"})
    n = sum(p.numel() for p in model.parameters())
    gru = sum(p.numel() for p in model.rnn.parameters())
    assert n == 736_027
    assert round(gru / n, 3) == 0.955
    assert model.rnn.bidirectional and model.rnn.num_layers == 3 and model.rnn.hidden_size == 128


def test_forward_shapes_and_time_dependence():
    torch.manual_seed(0)
    model = ChiroDiff(ChiroDiffConfig(hidden_size=16, num_layers=1))
    x = torch.randn(2, 9, 3)
    out = model(x, torch.tensor([1, 1]))
    assert out.shape == (2, 9, 3)
    assert not torch.allclose(out, model(x, torch.tensor([900, 900])))
    with pytest.raises(ValueError, match=r"x: expected \(B, L, 3\)"):
        model(torch.randn(2, 9, 4), torch.tensor([1, 1]))


def test_config_errors():
    with pytest.raises(ValueError, match="hidden_size"):
        ChiroDiffConfig(hidden_size=0)
    with pytest.raises(ValueError, match="time_dim"):
        ChiroDiffConfig(time_dim=7)
    with pytest.raises(ValueError, match="unknown keys"):
        build_model({"type": "chirodiff", "hidden": 3})
