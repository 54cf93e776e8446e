"""One rank of the two-process FSDP2 tests (gloo, CPU): RigL inside the Trainer with
``training.distributed: fsdp``. Imported as a top-level module (see s2s_dist_worker.py for why).

Phases: ``one_step`` trains 2 steps without dropout (the test compares it with one process); ``full``
trains 20 steps in one go; ``killed`` trains the same run in another directory and
dies (``os._exit``) right after the checkpoint of step 10; ``resume`` resumes that directory to
step 20 with pickle and ``torch.load`` made to raise, and then a copy of it whose step-10 file of
rank 1 the test has corrupted (both ranks must fall back to step 5). Each phase writes this rank's results as
safetensors (tensors) and JSON (the rest) for the test to compare.
"""

import json
import os
import pickle
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ebsparse.diffusion.config import load_config
from ebsparse.diffusion.trainer import Trainer
from ebsparse.nn.sharded import full, is_sharded
from ebsparse.s2s import SparsityConfig
from ebsparse.s2s.trainer_plugin import SparsityPlugin

DIGITS = Path(__file__).resolve().parents[2] / "configs" / "digits.yaml"
STEPS, KILL_AT, ONE_STEP = 20, 10, 2


def fsdp_config(steps: int = STEPS):
    cfg = load_config(DIGITS, [
        f"training.steps={steps}", "training.batch_size=8", "training.ckpt_every=5", "training.log_every=1",
        "training.sample_every=0", "training.warmup=2", "model.dropout=0.1", "training.ema_rate=0.9",
        "training.weight_decay=0.01", "training.optimizer=adamw", "model.ch=16", "model.ch_mult=[1]",
        "model.attn_resolutions=[]", "training.distributed=fsdp",
    ])
    cfg.algorithms["sparsity"] = {"method": "rigl", "sparsity": 0.8, "update_every": 5, "prune_fraction": 0.3,
                                  "backend": "native"}
    return cfg


def _trainer(run_dir: Path, cfg=None):
    cfg = cfg or fsdp_config()
    plugin = SparsityPlugin(SparsityConfig.from_dict(cfg.algorithms["sparsity"]))
    return Trainer(cfg, run_dir, plugins=[plugin]), plugin


def _local(t: torch.Tensor) -> torch.Tensor:
    return (t.to_local() if is_sharded(t) else t).detach().clone().contiguous()


class _Recorder:
    """After every RigL update: the masks before and after, and the whole Adam moments (the optimizer
    step is skipped on update steps, so they are exactly what the reset left)."""

    def __init__(self, plugin):
        self.sp = plugin.sparsifier
        self.before = {t.name: t.mask.clone() for t in self.sp.targets}
        self.tensors: dict[str, torch.Tensor] = {"initial_masks/" + n: m.clone() for n, m in self.before.items()}
        self.updates: list[int] = []

    def __call__(self, trainer, stats):
        if self.sp.last_update.get("step") != self.sp.steps:
            return
        u = len(self.updates)
        self.updates.append(trainer.step)
        for t in self.sp.targets:
            state = trainer.optimizer.state[t.weight]
            self.tensors[f"update{u}/before/{t.name}"] = self.before[t.name]
            self.tensors[f"update{u}/mask/{t.name}"] = t.mask.clone()
            for key in ("exp_avg", "exp_avg_sq"):  # gathered: a collective at the same point on every rank
                self.tensors[f"update{u}/{key}/{t.name}"] = full(state[key]).clone()
            self.before[t.name] = t.mask.clone()


def _write(trainer, plugin, out: Path, tag: str, recorder=None, start_step: int = 0) -> None:
    state, meta = trainer.state_tensors()
    tensors = {f"state/{k}": _local(v) for k, v in state.items()}
    sharded = sorted(k for k, v in state.items() if is_sharded(v))
    for t in plugin.sparsifier.targets:  # whole weights, to check them against the masks
        tensors[f"weight/{t.name}"] = full(t.weight).detach().clone()
    if recorder is not None:
        tensors.update(recorder.tensors)
    rank = dist.get_rank()
    save_file(tensors, str(out / f"{tag}_rank{rank}.safetensors"))
    info = {"plugins": meta["plugins"], "step": trainer.step, "start_step": start_step, "sharded": sharded,
            "densities": plugin.sparsifier.densities, "blocks": trainer.sharded.blocks,
            "updates": recorder.updates if recorder else None,
            "local_shapes": {k: list(_local(v).shape) for k, v in state.items() if is_sharded(v)},
            "global_shapes": {k: list(v.shape) for k, v in state.items() if is_sharded(v)}}
    (out / f"{tag}_rank{rank}.json").write_text(json.dumps(info))


def _gru(out: Path) -> None:
    """RigL on GRU weights (masked in place, no sparse module) sharded by FSDP2, with the sparsifier in
    a plain loop: the gradient hook of an in-place mask does not survive the sharding, so the
    sparsifier masks the sharded gradient itself. Records what outside the masks is nonzero."""
    from s2s_models import GRUNet
    from torch.distributed.device_mesh import init_device_mesh

    from ebsparse.diffusion.distributed import shard_blocks
    from ebsparse.s2s import RigL

    torch.manual_seed(0)
    model = GRUNet()
    sp = RigL(sparsity=0.7, update_every=3, prune_fraction=0.3, layers=["rnn"])
    sp.apply(model)
    shard_blocks(model, init_device_mesh("cpu", (dist.get_world_size(),)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp.attach_optimizer(opt)
    leaks, tensors = [], {}
    for i in range(6):
        g = torch.Generator().manual_seed(100 * dist.get_rank() + i)  # each rank its own data
        opt.zero_grad()
        model(torch.randn(2, 7, 5, generator=g)).pow(2).mean().backward()
        stepping = sp.step()
        for t in sp.targets:
            grad, weight = full(t.weight.grad), full(t.weight)
            if stepping:
                leaks.append(float(grad[~t.mask].abs().sum()))
            leaks.append(float(weight[~t.mask].abs().sum()))
        if stepping:
            opt.step()
    for t in sp.targets:
        tensors[f"mask/{t.name}"] = t.mask.clone()
        tensors[f"local/{t.name}"] = t.weight.to_local().detach().clone()
    save_file(tensors, str(out / f"gru_rank{dist.get_rank()}.safetensors"))
    (out / f"gru_rank{dist.get_rank()}.json").write_text(json.dumps(
        {"leaks": leaks, "updates": sp.updates, "kinds": sorted({type(t).__name__ for t in sp.targets})}))


def _no_pickle(*args, **kwargs):
    raise AssertionError("a sharded checkpoint must load without pickle or torch.load")


def run_rank(rank: int, world: int, init_file: str, out_dir: str, phase: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = Path(out_dir)
    try:
        if phase == "train":
            one = fsdp_config(ONE_STEP)  # without dropout: comparable with one process
            one.model["dropout"] = 0.0
            _trainer(out / "one_step", one)[0].fit(progress=False)
            trainer, plugin = _trainer(out / "full")
            recorder = _Recorder(plugin)
            trainer.fit(progress=False, callback=recorder)
            _write(trainer, plugin, out, "full", recorder)

            def die_after_checkpoint(trainer, stats):
                if trainer.step == KILL_AT:
                    sys.stdout.flush()
                    os._exit(0)  # a kill: no cleanup, no final save

            trainer, _ = _trainer(out / "split")
            trainer.fit(progress=False, callback=die_after_checkpoint)
            raise AssertionError("the run was to die at step 10")
        for run, tag in (("split", "resumed"), ("split_corrupt", "fallback")):
            trainer, plugin = _trainer(out / run)
            saved = pickle.load, pickle.loads, torch.load
            pickle.load = pickle.loads = torch.load = _no_pickle
            try:
                summary = trainer.fit(resume=True, progress=False)
            finally:
                pickle.load, pickle.loads, torch.load = saved
            _write(trainer, plugin, out, tag, start_step=summary["start_step"])
        _gru(out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as in s2s_dist_worker.py: skip the interpreter teardown that sometimes aborts
