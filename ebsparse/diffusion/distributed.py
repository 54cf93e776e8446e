"""Sharded training for the Trainer (``training.distributed: fsdp``): FSDP2 ``fully_shard`` over every
process of a ``torchrun`` launch, gloo on CPUs and NCCL on GPUs.

What changes against one process:

- the model is sharded after the plugins have prepared it (a sparse model is sharded with its sparse
  modules in place): ``fully_shard`` on every block (each module of an ``nn.ModuleList`` that has a
  forward of its own and parameters) and on the root. Parameters, gradients, Adam moments and EMA
  weights become DTensors holding one shard (dim 0) per rank; buffers — masks among them — stay
  whole on every rank, which is how masks stay identical (:mod:`ebsparse.nn.sharded`).
- ``training.batch_size`` is the global batch: every rank draws the whole step (data order,
  timesteps, noise, flips: the same generator everywhere) and trains its contiguous slice, so the
  gradient that the reduce-scatter averages is the one-process gradient of that batch.
- checkpoints are sharded (:mod:`ebsparse.diffusion.sharded_checkpoint`): one safetensors file per
  rank plus a JSON index, no pickle. When ``fit`` ends, rank 0 also joins the last one into the
  ordinary ``checkpoint.safetensors``, which sampling, FID and ``model_from_checkpoint`` read.
- rank 0 alone writes logs, ``config.json`` and the progress bar; the logged loss is the mean over ranks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .sharded_checkpoint import (consolidate_sharded_checkpoint, has_sharded_checkpoint, load_sharded_checkpoint,
                                 save_sharded_checkpoint)

__all__ = ["ShardedTraining", "shard_blocks", "check_sharded_config"]

_LAUNCH_HINT = ("launch it with torchrun (e.g. torchrun --nproc-per-node 2 -m ebsparse train CONFIG "
                "--set training.distributed=fsdp), which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")


def shard_blocks(model: nn.Module, mesh) -> list[str]:
    """``fully_shard`` every block of ``model`` (innermost first), then the root; returns the block names.

    A block is a module held in an ``nn.ModuleList`` that defines its own ``forward`` and owns
    parameters: such a module is called as a whole, which is what lets FSDP2 gather its parameters
    just before and free them just after. (A plain ``nn.Module()`` used as a namespace, as the DDPM
    U-Net's ``down[i]``, is never called, so it is not a block; its children are.)"""
    from torch.distributed.fsdp import fully_shard

    blocks = []
    for name, module in model.named_modules():
        for i, child in enumerate(module.children() if isinstance(module, nn.ModuleList) else ()):
            has_forward = type(child).forward is not nn.Module.forward
            if has_forward and any(True for _ in child.parameters()):
                blocks.append(f"{name}.{i}" if name else str(i))
    for name in reversed(blocks):  # children before their parents
        fully_shard(model.get_submodule(name), mesh=mesh)
    fully_shard(model, mesh=mesh)
    return blocks


def check_sharded_config(config, world_size: int) -> None:
    """Refuse settings a sharded run of ``world_size`` processes cannot honour, naming the key."""
    tc = config.training
    if tc.batch_size % world_size:
        raise ValueError(f"training.batch_size={tc.batch_size} must be divisible by the {world_size} "
                         "processes of training.distributed='fsdp' (it is the global batch)")
    if tc.sample_every:
        raise ValueError(f"training.sample_every={tc.sample_every} must be 0 with training.distributed='fsdp': "
                         "sample grids during training need the whole model in one process; sample the "
                         "checkpoint.safetensors that rank 0 joins at the end (ebsparse sample RUN_DIR)")


class ShardedTraining:
    """The process group, device mesh and rank of a sharded run, and what the Trainer asks of them."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if not dist.is_available():
            raise RuntimeError("training.distributed='fsdp': this torch build has no torch.distributed")
        if not dist.is_initialized():
            missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise RuntimeError(f"training.distributed='fsdp' needs a process group, and the environment has no "
                                   f"{', '.join(missing)}: {_LAUNCH_HINT}")
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda" and device.index is None:  # one GPU per process
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count())))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        self.mesh = init_device_mesh(device.type, (self.world_size,))
        self.blocks: list[str] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check(self, config) -> None:
        check_sharded_config(config, self.world_size)

    def shard(self, model: nn.Module, seed: int) -> nn.Module:
        """Shard ``model`` (identical on every rank: built from the same seed) and give every rank its
        own stream of the global generator (dropout), so ranks do not drop alike."""
        self.blocks = shard_blocks(model, self.mesh)
        if self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank)
        return model

    def local_batch(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous slice (dim 0) of each global-batch tensor."""
        n = tensors[0].shape[0] // self.world_size
        return tuple(t[self.rank * n:(self.rank + 1) * n] for t in tensors)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (the loss of the global batch); every rank gets it."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world_size

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep_last: int,
             replace_latest: bool) -> Path:
        return save_sharded_checkpoint(run_dir, tensors, {**meta, "blocks": self.blocks}, keep_last=keep_last,
                                       replace_latest=replace_latest, device=self.device)

    def has_checkpoint(self, run_dir: Path) -> bool:
        return has_sharded_checkpoint(run_dir)

    def load(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta, _ = load_sharded_checkpoint(path, self.mesh, device=self.device)
        return tensors, meta

    def consolidate(self, run_dir: Path, out: Path) -> None:
        """Rank 0 joins the newest sharded checkpoint into ``out``; the others wait for it."""
        import torch.distributed as dist

        if self.is_main:
            consolidate_sharded_checkpoint(run_dir, out)
        dist.barrier()
