"""One rank of the two-process gloo test. spawn pickles the function by module name, and a stray
site-packages ``tests`` package can shadow ours in the children, so the test puts this folder on
``sys.path`` and imports this file as a top-level module."""

import os
import sys

import torch
import torch.distributed as dist
from s2s_models import ConvNet, conv_batch
from torch import nn

from ebsparse.s2s import MagRan, RigL


def run_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for method in ("rigl", "magran"):
            _train(rank, method, out_dir)
    finally:
        dist.destroy_process_group()
    # The results are on disk; leave without the interpreter's teardown. Under pytest, about one run
    # in five aborted there ("terminate called without an active exception", after destroy_process_group
    # and the atexit handlers had run: a native thread still joinable when static objects are
    # destroyed), with the kernels of 420b82b as well (3 of 16 runs). An exception above still
    # propagates to spawn.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train(rank: int, method: str, out_dir: str) -> None:
    torch.manual_seed(0)
    model = ConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = {"rigl": RigL, "magran": MagRan}[method](sparsity=0.7, update_every=2, prune_fraction=0.3)
    sp.apply(model, opt)
    history = []
    for i in range(6):
        x, y = conv_batch(1000 * rank + i)  # each rank its own data
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if sp.step():
            opt.step()
        if sp.last_update.get("step") == sp.steps:
            history.append({t.name: t.mask.clone() for t in sp.targets})
    torch.save({"history": history, "weights": {t.name: t.weight.detach().clone() for t in sp.targets}},
               f"{out_dir}/{method}_rank{rank}.pt")
