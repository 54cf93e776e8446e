"""Atomic, pickle-free checkpoints: one ``.safetensors`` file plus a JSON sidecar.

The safetensors file is the source of truth: it holds every tensor (model, EMA, optimizer state,
RNG states) and, in its header, the same JSON metadata as the sidecar, so a reader never has to
trust that two files were written together. Each file is written to a temporary name in the same
directory, fsynced, then ``os.replace``d over the old one: a crash mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes", "flatten_optimizer_state",
           "unflatten_optimizer_state", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "ebsparse-checkpoint-v1"
_META_KEY = "ebsparse"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optim/<param>/<key>``) and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{pid}/{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``path`` (``.safetensors``) and ``path`` with ``.json`` atomically; returns the tensor file path.

    ``tensors`` keys are namespaced by the caller (``model/...``, ``ema/...``); ``metadata`` must be
    JSON-serialisable.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint: path must end in .safetensors, got {str(path)!r}")
    meta = {"format": CHECKPOINT_FORMAT, **metadata}
    meta_json = json.dumps(meta, sort_keys=True)
    blob = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata={_META_KEY: meta_json})
    atomic_write_bytes(path, blob)
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Accepts the ``.safetensors`` path, the ``.json`` sidecar path or a run directory holding
    ``checkpoint.safetensors``. Raises ``FileNotFoundError``/``ValueError`` naming the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found; expected a .safetensors file written by ebsparse train")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file: {e}") from e
    if _META_KEY not in header:
        raise ValueError(f"checkpoint {str(path)!r} has no ebsparse metadata; it was not written by ebsparse")
    meta = json.loads(header[_META_KEY])
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} has format {meta.get('format')!r}; expected {CHECKPOINT_FORMAT!r}")
    return tensors, meta
