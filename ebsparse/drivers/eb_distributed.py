"""Region-parallel TA-EB training with ``torch.distributed``: part of the EB-Diff-Train driver (front layer).

The ranks are split into one process group per region (rank r trains region ``r % n_regions``);
inside a group the gradients are averaged (:class:`GradAllReduce`), so a group is data-parallel
training of its region model. Every group has its own optimizer and EMA (its own Trainer), its
own timesteps (``timestep_range``), and every member its own data order (seed offset). Launch with
``torchrun --nproc-per-node N ebsparse eb-train CONFIG --ta-eb`` (gloo on CPU, NCCL on GPUs) or, in
tests, ``torch.multiprocessing.spawn``.
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = ["region_ranks", "train_regions_distributed"]


def region_ranks(world_size: int, n_regions: int) -> list[list[int]]:
    """Ranks of each region's process group: region i gets ranks i, i + n, i + 2n, ..."""
    if world_size < n_regions:
        raise ValueError(f"region-parallel training needs at least one process per region: "
                         f"world_size={world_size} < {n_regions} regions")
    return [list(range(i, world_size, n_regions)) for i in range(n_regions)]


def train_regions_distributed(run, search: dict[str, Any]) -> dict[str, Any] | None:
    """Every rank trains its region's ticket; rank 0 returns the stage result (others ``None``).

    Each region's chain is timed as its ticket's search plus its own measured training (regions in
    parallel, :mod:`ebsparse.earlybird.accounting`); the wall-clock of the whole parallel phase on
    rank 0 (barrier to barrier) is kept as ``parallel_wall_s``.
    """
    import torch.distributed as dist

    from ..diffusion.trainer import Trainer
    from ..earlybird.accounting import region_parallel_totals, region_row
    from ..earlybird.plugin import GradAllReduce, StageClock
    from ..earlybird.router import TimestepRouter, save_router
    from ..models import build_model
    from ..pruning.config import PruningConfig
    from ..pruning.masks import ChannelMask
    from ..pruning.recipe import load_pruned, load_recipe, save_pruned
    from .stages import with_steps

    rank, world = dist.get_rank(), dist.get_world_size()
    regions = run.eb.regions
    groups_ranks = region_ranks(world, len(regions))
    groups = [dist.new_group(r, backend=dist.get_backend()) for r in groups_ranks]  # every rank creates every group
    i = rank % len(regions)
    member = groups_ranks[i].index(rank)
    name = f"region{i}"
    ticket = search["tickets"][name]
    steps = run._region_steps(i, ticket["step"])
    out_dir = run.run_dir / "ta_eb_parallel"
    dist.barrier()
    t0 = time.perf_counter()
    clock = StageClock()
    if steps > 0:
        model = run._load_ticket(name)
        trainer = Trainer(with_steps(run.config, steps, seed_offset=1 + i + 1000 * member, warmup=run.eb.finetune_warmup),
                          out_dir / name / f"member{member}", model=model,
                          timestep_range=(regions[i].low, min(regions[i].high, run.T - 1)),
                          plugins=[GradAllReduce(groups[i]), clock])
        trainer.fit(resume="auto", progress=run.progress and member == 0, desc=f"{name} (rank {rank})")
        final = trainer.model
        trainer.ema.copy_to(final)
    else:
        final = run._load_ticket(name)
    if member == 0:
        recipe = load_recipe(run.run_dir / "tickets" / name)
        save_pruned(out_dir / name / "final", final.eval(), ChannelMask.from_json(recipe["groups"]), base=run.spec,
                    example_inputs=run.inputs, config=PruningConfig.from_dict(recipe["pruning"]),
                    extra={"train_s": clock.train_s, "steps": steps})
    dist.barrier()
    wall_s = time.perf_counter() - t0
    if rank != 0:
        return None
    models, masks, configs, train_s = [], [], [], []
    for k in range(len(regions)):
        m, recipe = load_pruned(out_dir / f"region{k}" / "final", build_model)
        models.append(m)
        masks.append(ChannelMask.from_json(recipe["groups"]))
        configs.append(PruningConfig.from_dict(recipe["pruning"]))
        train_s.append(recipe["extra"]["train_s"])
    save_router(run.run_dir / "models" / "ta_eb", TimestepRouter(models, regions), run.spec, run.inputs, masks, configs,
                extra={"region_training": "processes", "world_size": world})
    rows = []
    for k in range(len(regions)):
        t = search["tickets"][f"region{k}"]
        rows.append(region_row(f"region{k}", t, run._region_steps(k, t["step"]), train_s[k]))
    (out_dir / "ranks.json").write_text(json.dumps({"groups": groups_ranks, "region_train_s": train_s}) + "\n")
    return {**region_parallel_totals(rows), "parallel_wall_s": wall_s, "region_training": "processes",
            "world_size": world}
