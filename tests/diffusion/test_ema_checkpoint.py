"""EMA arithmetic; atomic, pickle-free checkpoints."""

import json

import pytest
import torch
from torch import nn

from ebsparse.diffusion import checkpoint as ckpt_mod
from ebsparse.diffusion.checkpoint import (flatten_optimizer_state, load_checkpoint, save_checkpoint,
                                           unflatten_optimizer_state)
from ebsparse.diffusion.ema import EMA


def test_ema_update_formula_and_copy():
    m = nn.Linear(2, 2)
    ema = EMA(m, rate=0.9)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    for k, v in ema.state_dict().items():
        assert torch.allclose(v, 0.9 * before[k] + 0.1 * (before[k] + 1.0))
    fresh = nn.Linear(2, 2)
    ema.copy_to(fresh)
    assert torch.equal(fresh.weight, ema.state_dict()["weight"])
    with pytest.raises(ValueError, match="rate"):
        EMA(m, rate=1.0)
    with pytest.raises(ValueError, match="missing"):
        ema.load_state_dict({})


def _adam_state():
    m = nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.99))
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    return m, opt


def test_round_trip_with_optimizer(tmp_path):
    m, opt = _adam_state()
    opt_tensors, opt_meta = flatten_optimizer_state(opt.state_dict())
    tensors = {**{f"model/{k}": v for k, v in m.state_dict().items()}, **opt_tensors}
    path = save_checkpoint(tmp_path / "c.safetensors", tensors, {"step": 7, "optimizer": opt_meta})
    assert json.loads((tmp_path / "c.json").read_text())["step"] == 7
    loaded, meta = load_checkpoint(path)
    opt2 = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=5.0)
    opt2.load_state_dict(unflatten_optimizer_state(loaded, meta["optimizer"]))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][k])
    assert not list(tmp_path.glob("*.tmp"))


def test_torn_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp"))  # the partial file was cleaned up


def test_truncated_file_and_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="no ebsparse metadata"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        save_checkpoint(tmp_path / "c.pt", {}, {})


def test_buffers_are_copied_when_they_change_and_only_then():
    """A bool buffer (a sparse layer's mask) is copied into the shadow after in-place edits and after
    being replaced, and not read again while unchanged; other buffers are copied on every update
    (BatchNorm updates its running statistics without a version bump)."""
    m = torch.nn.BatchNorm1d(3)
    m.register_buffer("mask", torch.ones(3, dtype=torch.bool))
    ema = EMA(m, rate=0.5)
    ema.update(m)
    m(torch.randn(4, 3))
    m.mask.data[0] = False  # bypasses the version counter: not seen, as documented for masks
    ema.update(m)
    assert torch.equal(ema.shadow["running_mean"], m.running_mean)
    assert ema.shadow["mask"].all()
    m(torch.randn(4, 3))  # running statistics move without a version bump: still copied
    m.mask[1] = False  # in place: seen
    ema.update(m)
    assert torch.equal(ema.shadow["running_mean"], m.running_mean)
    assert torch.equal(ema.shadow["mask"], torch.tensor([False, False, True]))
    m.mask = torch.zeros(3, dtype=torch.bool)  # replaced: seen
    ema.update(m)
    assert not ema.shadow["mask"].any()
