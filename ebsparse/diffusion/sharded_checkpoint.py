"""Sharded checkpoints of an FSDP2 run: one checkpoint file per rank plus a JSON index, no pickle.

Layout, in the run directory::

    checkpoint.sharded/step_000000010/rank00000.safetensors   (+ .json sidecar)   rank 0's shards
                                      rank00001.safetensors   (+ .json sidecar)   rank 1's shards
                                      index.json              the files and the SHA-256 of each

Each rank file is an ordinary :func:`~ebsparse.diffusion.checkpoint.save_checkpoint` file (atomic,
hashed) holding that rank's tensors: its shard of every DTensor (parameters, Adam moments, EMA
weights) and its whole copy of everything else (masks, RNG states). Its metadata records, for each
DTensor, the global shape and placements that rebuild it around the shard. A checkpoint is complete
when its ``index.json`` exists: rank 0 writes it (atomically) only after every rank has written
its file and reported that file's hash, and a load checks each file against it — so a crash
mid-save, or a file of another save of the step, falls back to the previous complete checkpoint.

Why not ``torch.distributed.checkpoint``'s own storage: its ``FileSystemWriter`` pickles the
``.metadata`` file (``pickle.dump``/``pickle.load``) and every non-tensor item (``torch.save``);
its ``HuggingFaceStorageWriter`` (safetensors) writes tensors only and treats every plain tensor as
replicated, saving it from one rank, which loses the per-rank RNG states an exact resume needs.

A resume needs the world size the checkpoint was written with (the shards are cut for it). The run
directory must be on a filesystem every process sees (multi-node: a shared filesystem).
:func:`consolidate_sharded_checkpoint` joins the shards into one ordinary checkpoint (one process,
no process group), which everything that reads ``checkpoint.safetensors`` reads.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .checkpoint import _HASH_KEY, atomic_write_bytes, load_checkpoint, save_checkpoint

__all__ = ["SHARDED_DIR", "SHARDED_FORMAT", "save_sharded_checkpoint", "load_sharded_checkpoint",
           "has_sharded_checkpoint", "sharded_checkpoint_dirs", "consolidate_sharded_checkpoint"]

SHARDED_DIR = "checkpoint.sharded"
SHARDED_FORMAT = "ebsparse-sharded-checkpoint-v1"
_INDEX = "index.json"


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:09d}"


def _rank_file(step_dir: Path, rank: int) -> Path:
    return step_dir / f"rank{rank:05d}.safetensors"


def sharded_checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints (step directories with an index) of ``run_dir``, newest first."""
    root = Path(run_dir) / SHARDED_DIR
    if not root.is_dir():
        return []
    dirs = [d for d in root.glob("step_*") if d.name[5:].isdigit() and (d / _INDEX).is_file()]
    return sorted(dirs, key=lambda d: int(d.name[5:]), reverse=True)


def has_sharded_checkpoint(run_dir: str | Path) -> bool:
    return bool(sharded_checkpoint_dirs(run_dir))


def _placement_name(p) -> str:
    from torch.distributed.tensor import Replicate, Shard

    if type(p) is Shard:
        return f"S{p.dim}"
    if type(p) is Replicate:
        return "R"
    raise ValueError(f"sharded checkpoint: cannot store a DTensor placed as {p!r} (only Shard(dim) and Replicate())")


def _placement(name: str):
    from torch.distributed.tensor import Replicate, Shard

    return Replicate() if name == "R" else Shard(int(name[1:]))


def _split(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This rank's tensors (each DTensor's local shard) and the layout of every DTensor."""
    from ebsparse.nn.sharded import is_sharded

    local, layouts = {}, {}
    for name, t in tensors.items():
        if is_sharded(t):
            layouts[name] = {"shape": list(t.shape), "placements": [_placement_name(p) for p in t.placements]}
            t = t.to_local()
        local[name] = t
    return local, layouts


def _join(tensors: dict[str, torch.Tensor], layouts: dict[str, Any], mesh, device: torch.device) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    out = dict(tensors)
    for name, layout in layouts.items():
        shape = torch.Size(layout["shape"])
        stride = torch.empty(shape, device="meta").stride()
        out[name] = DTensor.from_local(tensors[name].to(device), mesh, [_placement(p) for p in layout["placements"]],
                                       run_check=False, shape=shape, stride=stride)
    return out


def _all_gather_digests(digest: str, device: torch.device) -> list[str]:
    """Every rank's SHA-256 (hex), exchanged as bytes in a tensor (object collectives would pickle)."""
    import torch.distributed as dist

    mine = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [bytes(t.cpu().tolist()).hex() for t in out]


def save_sharded_checkpoint(run_dir: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *,
                            keep_last: int = 1, replace_latest: bool = False,
                            device: torch.device | str = "cpu") -> Path:
    """Write this rank's part of the checkpoint of step ``meta["step"]``; a collective (every rank calls
    it). Rank 0 then writes the index and removes the complete checkpoints beyond the ``keep_last``
    newest. ``replace_latest``: the step's checkpoint is being written again (its directory is reused).
    Returns the step directory."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    step_dir = _step_dir(Path(run_dir) / SHARDED_DIR, int(meta["step"]))
    if rank == 0:  # a second save of the step: incomplete until its new index is written
        (step_dir / _INDEX).unlink(missing_ok=True)
    dist.barrier()
    local, layouts = _split(tensors)
    path = save_checkpoint(_rank_file(step_dir, rank), local,
                           {**meta, "rank": rank, "world_size": world, "sharded": layouts}, keep_last=1)
    digest = json.loads(path.with_suffix(".json").read_text())["content_sha256"]
    digests = _all_gather_digests(digest, torch.device(device))
    if rank == 0:
        index = {"format": SHARDED_FORMAT, "step": int(meta["step"]), "world_size": world,
                 "files": {_rank_file(step_dir, r).name: d for r, d in enumerate(digests)}}
        atomic_write_bytes(step_dir / _INDEX, (json.dumps(index, indent=2) + "\n").encode())
        for stale in sharded_checkpoint_dirs(run_dir)[keep_last:]:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return step_dir


def _load_rank(step_dir: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        index = json.loads((step_dir / _INDEX).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"sharded checkpoint {str(step_dir)!r}: unreadable {_INDEX}: {e}") from e
    if index.get("format") != SHARDED_FORMAT:
        raise ValueError(f"sharded checkpoint {str(step_dir)!r} has format {index.get('format')!r}; "
                         f"expected {SHARDED_FORMAT!r}")
    path = _rank_file(step_dir, rank)
    tensors, meta = load_checkpoint(path)  # verifies the file against the hash in its header
    with safe_open(str(path), framework="pt") as f:
        stored = (f.metadata() or {}).get(_HASH_KEY)
    if stored is None or index["files"].get(path.name) != stored:
        raise ValueError(f"sharded checkpoint {str(path)!r} does not belong to the save its {_INDEX} describes "
                         "(the hashes differ)")
    return tensors, meta


def load_sharded_checkpoint(path: str | Path, mesh, device: torch.device | str = "cpu"
                            ) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """Load this rank's part of the newest complete checkpoint of a run directory (or of the step
    directory ``path``), with its DTensors rebuilt on ``mesh``; a collective. Returns (tensors, meta,
    step directory). A checkpoint that any rank cannot read or verify is skipped, with a warning, for
    the one before it (all ranks agree on which); raises ``FileNotFoundError`` when there is none,
    ``ValueError`` when none is usable or it was written by another number of processes."""
    import torch.distributed as dist

    path = Path(path)
    rank, world = dist.get_rank(), dist.get_world_size()
    candidates = [path] if (path / _INDEX).is_file() else sharded_checkpoint_dirs(path)
    if not candidates:
        raise FileNotFoundError(f"no sharded checkpoint at {str(path)!r} (expected {SHARDED_DIR}/step_*/{_INDEX})")
    failures = []
    for step_dir in candidates:
        saved_world = json.loads((step_dir / _INDEX).read_text()).get("world_size")
        if saved_world != world:
            raise ValueError(f"sharded checkpoint {str(step_dir)!r} was written by {saved_world} processes, and this "
                             f"run has {world}: resume with torchrun --nproc-per-node (x --nnodes) = {saved_world}")
        try:
            tensors, meta = _load_rank(step_dir, rank)
            error = None
        except (ValueError, OSError) as e:
            error = e
        ok = torch.tensor([0 if error else 1], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if int(ok):
            if failures:
                warnings.warn(f"{'; '.join(failures)}. Resuming from the earlier checkpoint {str(step_dir)!r}",
                              stacklevel=2)
            return _join(tensors, meta.pop("sharded"), mesh, torch.device(device)), meta, step_dir
        failures.append(f"rank {rank}: {error}" if error else f"sharded checkpoint {str(step_dir)!r} failed on another rank")
    raise ValueError("no usable sharded checkpoint: " + "; ".join(failures))


def consolidate_sharded_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Join the newest complete sharded checkpoint of a run directory (or the step directory ``path``)
    into one :func:`~ebsparse.diffusion.checkpoint.save_checkpoint` file ``out``: each DTensor
    concatenated from every rank's shard, everything else (masks, RNG states) as rank 0 holds it.
    Needs no process group; holds the whole state in memory. Returns ``out``."""
    path = Path(path)
    step_dir = path if (path / _INDEX).is_file() else next(iter(sharded_checkpoint_dirs(path)), None)
    if step_dir is None:
        raise FileNotFoundError(f"no sharded checkpoint at {str(path)!r} (expected {SHARDED_DIR}/step_*/{_INDEX})")
    world = json.loads((step_dir / _INDEX).read_text())["world_size"]
    parts = [_load_rank(step_dir, r) for r in range(world)]
    tensors, meta = dict(parts[0][0]), dict(parts[0][1])
    layouts = meta.pop("sharded")
    for key in ("rank", "world_size", "format", "blocks"):
        meta.pop(key, None)
    for name, layout in layouts.items():
        if len(layout["placements"]) != 1:
            raise ValueError(f"sharded checkpoint {str(step_dir)!r}: {name} is placed on a "
                             f"{len(layout['placements'])}-D mesh; only 1-D meshes are joined")
        placement = layout["placements"][0]
        whole = tensors[name] if placement == "R" else torch.cat([p[0][name] for p in parts], int(placement[1:]))
        if list(whole.shape) != layout["shape"]:
            raise ValueError(f"sharded checkpoint {str(step_dir)!r}: the shards of {name} join to "
                             f"{list(whole.shape)}, expected {layout['shape']}")
        tensors[name] = whole
    return save_checkpoint(out, tensors, meta, keep_last=1)
