"""Checkpoint integrity: a corrupted file is refused naming it; earlier checkpoints are kept and
``--resume`` falls back to the newest good one."""

import json
import struct
import warnings

import pytest
import torch

from ebsparse.diffusion.checkpoint import (CheckpointIntegrityError, checkpoint_files, load_checkpoint,
                                           load_latest_good, save_checkpoint)
from ebsparse.diffusion.trainer import Trainer


def _data_start(path) -> int:
    """Offset of the first tensor byte (safetensors: 8-byte header length, JSON header, data)."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_tensor_data_is_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(64.0), "b": torch.ones(3)}, {"step": 1})
    load_checkpoint(path)  # intact: loads silently
    _flip(path, _data_start(path) + 100)  # inside some tensor's bytes; the file still parses
    with pytest.raises(CheckpointIntegrityError, match=r"c\.safetensors.*corrupted"):
        load_checkpoint(path)


def test_a_changed_value_in_the_metadata_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"step": 1234})
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"step\\": 1234', b'\\"step\\": 1235', 1))
    assert path.read_bytes() != data
    with pytest.raises(CheckpointIntegrityError, match="c.safetensors"):
        load_checkpoint(path)


def test_a_checkpoint_without_a_hash_loads_with_a_warning(tmp_path):
    from safetensors.torch import save_file

    meta = json.dumps({"format": "ebsparse-checkpoint-v1", "step": 3}, sort_keys=True)
    save_file({"w": torch.ones(2)}, str(tmp_path / "old.safetensors"), metadata={"ebsparse": meta})
    with pytest.warns(UserWarning, match="old.safetensors.*no content hash"):
        tensors, loaded = load_checkpoint(tmp_path / "old.safetensors")
    assert loaded["step"] == 3 and torch.equal(tensors["w"], torch.ones(2))


def test_keep_last_rotates_the_earlier_checkpoints(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    for step in range(1, 5):
        save_checkpoint(path, {"w": torch.full((2,), float(step))}, {"step": step}, keep_last=3)
    files = checkpoint_files(path)
    assert [f.name for f in files] == ["checkpoint.safetensors", "checkpoint.1.safetensors", "checkpoint.2.safetensors"]
    assert [load_checkpoint(f)[1]["step"] for f in files] == [4, 3, 2]
    assert [json.loads(f.with_suffix(".json").read_text())["step"] for f in files] == [4, 3, 2]
    save_checkpoint(path, {"w": torch.zeros(2)}, {"step": 5}, keep_last=1)
    assert checkpoint_files(path) == [path] and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json", "checkpoint.safetensors"]
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(path, {}, {}, keep_last=0)


def test_latest_good_skips_corrupted_and_unreadable_files(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    for step in (1, 2, 3):
        save_checkpoint(path, {"w": torch.full((8,), float(step))}, {"step": step}, keep_last=3)
    _flip(path, _data_start(path) + 1)
    (tmp_path / "checkpoint.1.safetensors").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match=r"checkpoint\.safetensors.*corrupted.*checkpoint\.1\.safetensors.*"
                                         r"resuming from.*checkpoint\.2\.safetensors.*step 1"):
        tensors, meta, used = load_latest_good(path)
    assert used.name == "checkpoint.2.safetensors" and meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(8))
    assert (tmp_path / "checkpoint.safetensors.corrupt").is_file()  # moved aside, not rotated in as "good"
    _flip(used, _data_start(used) + 1)
    with pytest.raises(ValueError, match="no usable checkpoint.*checkpoint.2.safetensors"):
        load_latest_good(path)


def _tensors(run_dir):
    return load_checkpoint(run_dir / "checkpoint.safetensors")


class Crash(RuntimeError):
    pass


def test_resume_falls_back_to_the_previous_checkpoint_and_ends_bit_identical(tiny_digits_config, tmp_path):
    cfg = tiny_digits_config
    cfg.training.ckpt_every = 2
    Trainer(cfg, tmp_path / "whole").fit(progress=False)

    def crash(trainer, stats):
        if trainer.step == 5:
            raise Crash()

    split = tmp_path / "split"
    with pytest.raises(Crash):
        Trainer(cfg, split).fit(progress=False, callback=crash)
    latest = split / "checkpoint.safetensors"
    assert [load_checkpoint(f)[1]["step"] for f in checkpoint_files(latest)] == [4, 2]  # keep_last defaults to 2
    _flip(latest, _data_start(latest) + 1000)
    with pytest.warns(UserWarning, match=r"checkpoint\.safetensors.*corrupted.*resuming from.*checkpoint\.1\.safetensors.*step 2"):
        Trainer(cfg, split).fit(resume=True, progress=False)
    a, meta_a = _tensors(tmp_path / "whole")
    b, meta_b = _tensors(split)
    assert meta_a["step"] == meta_b["step"] == 6 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(split / "checkpoint.1.safetensors")[1]["step"] == 4


def test_sample_refuses_a_corrupted_checkpoint(tiny_digits_config, tmp_path, capsys):
    from ebsparse.cli import main

    tiny_digits_config.training.steps = 1
    Trainer(tiny_digits_config, tmp_path).fit(progress=False)
    latest = tmp_path / "checkpoint.safetensors"
    _flip(latest, _data_start(latest) + 10)
    assert main(["sample", str(tmp_path), "--num", "1", "--timesteps", "1"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors" in err and "corrupted" in err


def test_an_eb_stage_resumes_from_the_kept_checkpoint(tiny_digits_config, tmp_path):
    from ebsparse.drivers.stages import with_steps

    cfg = tiny_digits_config
    cfg.training.ckpt_every = 2
    Trainer(with_steps(cfg, 4), tmp_path).fit(resume="auto", progress=False)  # checkpoints at steps 2 and 4
    latest = tmp_path / "checkpoint.safetensors"
    _flip(latest, _data_start(latest) + 1000)
    again = Trainer(with_steps(cfg, 2), tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again.fit(resume="auto", progress=False)  # nothing left to train once resumed
    assert again.step == 2 and any("resuming from" in str(w.message) for w in caught)


def test_keep_last_is_validated_with_its_key(digits_config_path):
    from ebsparse.diffusion.config import load_config

    assert load_config(digits_config_path).training.keep_last == 2
    with pytest.raises(ValueError, match="training.keep_last must be a positive int"):
        load_config(digits_config_path, ["training.keep_last=0"])
