"""RigL under FSDP2 (``training.distributed: fsdp``, ``fully_shard`` per block + root), two gloo
processes on the CPU: masks identical on both ranks after every update, exact counts, weights and
Adam moments reset on the sharded parameters, and a run killed after a checkpoint and resumed (with
pickle made to raise) ends bit for bit where the uninterrupted run does. Also GRU weights (masked
in place) under ``fully_shard`` with the sparsifier in a plain loop.

One spawn trains the uninterrupted run and then the run that dies at step 10; a second resumes it
(s2s_fsdp_worker.py). The tests below read what the ranks wrote.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ebsparse.diffusion.config import load_config
from ebsparse.diffusion.sharded_checkpoint import SHARDED_DIR, sharded_checkpoint_dirs
from ebsparse.diffusion.trainer import Trainer, resume_breaking_changes
from ebsparse.s2s.masks import kept_count

HERE = Path(__file__).parent
RANKS = (0, 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("fsdp")
    import sys
    sys.path.insert(0, str(HERE))
    try:
        from s2s_fsdp_worker import run_rank
        mp.spawn(run_rank, args=(2, str(out / "init_train"), str(out), "train"), nprocs=2, join=True)
        shutil.copytree(out / "split", out / "split_corrupt")
        bad = out / "split_corrupt" / SHARDED_DIR / "step_000000010" / "rank00001.safetensors"
        data = bytearray(bad.read_bytes())
        data[-1] ^= 0xFF  # a flipped bit in rank 1's last tensor
        bad.write_bytes(bytes(data))
        mp.spawn(run_rank, args=(2, str(out / "init_resume"), str(out), "resume"), nprocs=2, join=True)
    finally:
        sys.path.remove(str(HERE))

    def read(tag, rank):
        return load_file(str(out / f"{tag}_rank{rank}.safetensors")), json.loads((out / f"{tag}_rank{rank}.json").read_text())

    return out, {(tag, r): read(tag, r) for tag in ("full", "resumed", "fallback") for r in RANKS}


def _names(tensors, prefix):
    return sorted(k[len(prefix):] for k in tensors if k.startswith(prefix))


def test_parameters_are_sharded_and_masks_are_not(runs):
    _, res = runs
    tensors, info = res[("full", 0)]
    assert info["blocks"], "no block was sharded on its own"
    assert "down.0.block.0" in info["blocks"]
    model_sharded = [k for k in info["sharded"] if k.startswith("model/")]
    assert model_sharded and not any(k.endswith("mask") for k in info["sharded"])
    # every parameter of the model is a DTensor, and so are its Adam moments and EMA weights
    assert any(k.startswith("optim/") for k in info["sharded"]) and any(k.startswith("ema/") for k in info["sharded"])
    weight = "model/conv_in.weight"
    assert weight in model_sharded
    assert info["local_shapes"][weight][0] * 2 == info["global_shapes"][weight][0]  # dim 0 split over 2 ranks


def test_masks_identical_on_both_ranks_after_every_update(runs):
    _, res = runs
    (t0, i0), (t1, i1) = res[("full", 0)], res[("full", 1)]
    assert i0["updates"] == i1["updates"] == [5, 10, 15, 20]  # RigL every 5 steps for 20 steps
    masks = _names(t0, "update3/mask/")
    assert masks
    for u in range(4):
        for name in masks:
            assert torch.equal(t0[f"update{u}/mask/{name}"], t1[f"update{u}/mask/{name}"]), (u, name)
    mask_keys = [k for k in t0 if k.startswith("state/model/") and k.endswith("mask")]
    assert mask_keys and all(torch.equal(t0[k], t1[k]) for k in mask_keys)


def test_masks_keep_exact_counts_and_move(runs):
    _, res = runs
    tensors, info = res[("full", 0)]
    moved = 0
    for name in _names(tensors, "update3/mask/"):
        initial = tensors[f"initial_masks/{name}"]
        expected = kept_count(initial.numel(), info["densities"][name])
        for u in range(4):
            assert int(tensors[f"update{u}/mask/{name}"].sum()) == expected, (u, name)
        moved += int((tensors[f"update3/mask/{name}"] != initial).sum())
        # the whole weight (gathered from its shards) is exactly zero outside its final mask
        weight, mask = tensors[f"weight/{name}"], tensors[f"update3/mask/{name}"]
        assert not weight[~mask].any(), name
        assert weight[mask].ne(0).float().mean() > 0.5, name
    assert moved > 0, "RigL moved no weight"


def test_adam_moments_of_dropped_and_grown_weights_restart_at_zero(runs):
    _, res = runs
    tensors, _ = res[("full", 1)]
    grown_total = 0
    for u in range(4):
        for name in _names(tensors, f"update{u}/mask/"):
            before, after = tensors[f"update{u}/before/{name}"], tensors[f"update{u}/mask/{name}"]
            grown = after & ~before
            stayed = after & before
            grown_total += int(grown.sum())
            for key in ("exp_avg", "exp_avg_sq"):
                moment = tensors[f"update{u}/{key}/{name}"]
                assert not moment[~after].any(), (u, key, name)  # dropped and inactive
                assert not moment[grown].any(), (u, key, name)  # grown
                assert moment[stayed].ne(0).any(), (u, key, name)  # kept weights keep their moments
    assert grown_total > 0


def test_resume_after_a_kill_equals_the_uninterrupted_run_bit_for_bit(runs):
    out, res = runs
    for rank in RANKS:
        (full_t, full_i), (res_t, res_i) = res[("full", rank)], res[("resumed", rank)]
        assert res_i["step"] == full_i["step"] == 20 and res_i["start_step"] == 10
        state = _names(full_t, "state/")
        assert state == _names(res_t, "state/")
        assert any(k.startswith("optim/") for k in state) and any(k.startswith("rng/") for k in state)
        for key in state:  # this rank's shards: weights, masks, EMA, Adam state, RNG states
            assert torch.equal(full_t[f"state/{key}"], res_t[f"state/{key}"]), (rank, key)
        assert full_i["plugins"] == res_i["plugins"]
    # the killed run left complete checkpoints of steps 5 and 10 (keep_last=2); the resume wrote 15 and 20
    steps = [int(d.name[5:]) for d in sharded_checkpoint_dirs(out / "split")]
    assert steps == [20, 15]
    files = {p.suffix for p in (out / "split" / SHARDED_DIR).rglob("*") if p.is_file()}
    assert files == {".safetensors", ".json"}
    # a corrupted file of rank 1 at step 10: both ranks fell back to step 5 and still end bit for bit alike
    for rank in RANKS:
        (full_t, _), (fb_t, fb_i) = res[("full", rank)], res[("fallback", rank)]
        assert fb_i["step"] == 20 and fb_i["start_step"] == 5
        for key in _names(full_t, "state/"):
            assert torch.equal(full_t[f"state/{key}"], fb_t[f"state/{key}"]), (rank, key)
    assert (out / "split_corrupt" / SHARDED_DIR / "step_000000010").is_dir() is False  # pruned by keep_last
    full_log = [json.loads(line) for line in (out / "full" / "metrics.jsonl").read_text().splitlines()]
    split_log = [json.loads(line) for line in (out / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in full_log] == [r["loss"] for r in split_log] and len(full_log) == 20


DIGITS = HERE.parents[1] / "configs" / "digits.yaml"


def test_distributed_setting_is_validated():
    with pytest.raises(ValueError, match=r"training.distributed='ddp'.*'none', 'fsdp'"):
        load_config(DIGITS, ["training.distributed=ddp"])
    assert load_config(DIGITS, []).training.distributed == "none"


def test_settings_a_sharded_run_cannot_honour_are_refused():
    from ebsparse.diffusion.distributed import check_sharded_config

    cfg = load_config(DIGITS, ["training.distributed=fsdp", "training.batch_size=6", "training.sample_every=0"])
    check_sharded_config(cfg, 2)
    check_sharded_config(cfg, 3)
    with pytest.raises(ValueError, match="training.batch_size=6 must be divisible by the 4 processes"):
        check_sharded_config(cfg, 4)
    cfg.training.sample_every = 100
    with pytest.raises(ValueError, match="training.sample_every=100 must be 0"):
        check_sharded_config(cfg, 2)


def test_fsdp_without_a_launcher_says_how_to_launch(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    cfg = load_config(DIGITS, ["training.distributed=fsdp"])
    with pytest.raises(RuntimeError, match="torchrun.*RANK, WORLD_SIZE"):
        Trainer(cfg, tmp_path)


def test_checkpoints_from_before_the_setting_resume_in_one_process():
    cfg = load_config(DIGITS, [])
    saved = cfg.to_dict()
    del saved["training"]["distributed"]
    assert resume_breaking_changes(saved, cfg) == {}
    saved["training"]["distributed"] = "fsdp"
    assert "training.distributed" in resume_breaking_changes(saved, cfg)


def test_the_last_checkpoint_is_joined_for_one_process_readers(runs):
    from ebsparse.drivers.checkpoints import model_from_checkpoint

    out, res = runs
    model, _, meta = model_from_checkpoint(out / "full", use_ema=False)  # checkpoint.safetensors, no process group
    state = model.state_dict()
    tensors, _ = res[("full", 0)]
    names = _names(tensors, "weight/")
    assert meta["step"] == 20 and names
    for name in names:
        assert torch.equal(state[name], tensors[f"weight/{name}"]), name
        assert torch.equal(state[name.rpartition(".")[0] + ".mask"], tensors[f"update3/mask/{name}"]), name


def test_sparse_gru_weights_under_fully_shard(runs):
    """The s2s trainers swap nn.GRU for SparseGRU (its weights on the sparse kernels): under
    fully_shard its masks stay whole and identical, its sharded weights and gradients zero outside."""
    out, _ = runs
    (t0, i0), (t1, i1) = ((load_file(str(out / f"gru_rank{r}.safetensors")),
                           json.loads((out / f"gru_rank{r}.json").read_text())) for r in RANKS)
    assert i0["kinds"] == ["GRUTarget"] and i0["updates"] == i1["updates"] == 2
    assert i0["leaks"] and not any(i0["leaks"]) and not any(i1["leaks"])  # gradients and weights zero outside
    masks = _names(t0, "mask/")
    assert masks and all(torch.equal(t0[f"mask/{n}"], t1[f"mask/{n}"]) for n in masks)
    assert any(not torch.equal(t0[f"local/{n}"], t1[f"local/{n}"]) for n in masks)  # two different shards


def test_two_ranks_train_what_one_process_trains(runs, tmp_path, monkeypatch):
    """``training.batch_size`` is the global batch: each rank trains its half, and the averaged
    gradient is the one-process gradient of the whole batch (up to summation order)."""
    from ebsparse.diffusion.checkpoint import load_checkpoint
    from ebsparse.s2s import SparsityConfig
    from ebsparse.s2s.trainer_plugin import SparsityPlugin

    monkeypatch.syspath_prepend(str(HERE))
    from s2s_fsdp_worker import ONE_STEP, fsdp_config

    out, _ = runs
    cfg = fsdp_config(ONE_STEP)
    cfg.model["dropout"] = 0.0
    cfg.training.distributed = "none"
    trainer = Trainer(cfg, tmp_path, plugins=[SparsityPlugin(SparsityConfig.from_dict(cfg.algorithms["sparsity"]))])
    trainer.fit(progress=False)
    one, _ = trainer.state_tensors()
    two, meta = load_checkpoint(out / "one_step" / "checkpoint.safetensors")  # joined from the two ranks' shards
    assert meta["step"] == ONE_STEP
    compared = [k for k in one if k.startswith(("model/", "ema/", "optim/"))]
    assert len(compared) > 100
    for key in compared:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (tmp_path, out / "one_step")]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=0)


def test_joining_checks_every_shard_against_the_index(runs, tmp_path):
    from ebsparse.diffusion.checkpoint import CheckpointIntegrityError
    from ebsparse.diffusion.sharded_checkpoint import consolidate_sharded_checkpoint

    out, _ = runs
    with pytest.raises(FileNotFoundError, match="no sharded checkpoint"):
        consolidate_sharded_checkpoint(tmp_path, tmp_path / "joined.safetensors")
    run = tmp_path / "run"
    shutil.copytree(out / "full" / SHARDED_DIR, run / SHARDED_DIR)
    latest, earlier = sharded_checkpoint_dirs(run)
    shutil.copy(earlier / "rank00001.safetensors", latest / "rank00001.safetensors")  # a file of another save
    with pytest.raises(ValueError, match="rank00001.safetensors.*does not belong to the save"):
        consolidate_sharded_checkpoint(run, tmp_path / "joined.safetensors")
    data = bytearray((earlier / "rank00000.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (earlier / "rank00000.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="rank00000.safetensors.*corrupted"):
        consolidate_sharded_checkpoint(earlier, tmp_path / "joined.safetensors")
    assert not (tmp_path / "joined.safetensors").exists()
