"""Atomic, pickle-free checkpoints: one ``.safetensors`` file plus a JSON sidecar.

The safetensors file is the source of truth: it holds every tensor (model, EMA, optimizer state,
RNG states) and, in its header, the same JSON metadata as the sidecar, so a reader never has to
trust that two files were written together. Each file is written to a temporary name in the same
directory, fsynced, then ``os.replace``d over the old one: a crash mid-write leaves the previous
checkpoint intact.

Integrity: the header also holds a SHA-256 over the metadata and every tensor's name, dtype, shape
and bytes, checked on every load, so a flipped bit on disk is an error naming the file rather than
a model that trains or samples from corrupted weights. ``save_checkpoint(..., keep_last=k)`` keeps
the ``k - 1`` checkpoints before the latest as ``<name>.1.safetensors`` (newest) ...
``<name>.<k-1>.safetensors``; :func:`load_latest_good` (``--resume``) falls back to them, newest
first, when the latest is unreadable or fails its hash.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "load_latest_good", "checkpoint_files", "content_sha256",
           "CheckpointIntegrityError", "atomic_write_bytes", "flatten_optimizer_state",
           "unflatten_optimizer_state", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "ebsparse-checkpoint-v1"
_META_KEY = "ebsparse"
_HASH_KEY = "ebsparse_sha256"


class CheckpointIntegrityError(ValueError):
    """A checkpoint file whose content no longer matches the hash written with it."""


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


def content_sha256(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """SHA-256 over the metadata JSON and each tensor's name, dtype, shape and bytes (sorted by name).

    Independent of how safetensors lays the data out, so the same tensors always hash the same.
    """
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The checkpoints that exist for ``path``: the latest first, then the kept earlier ones, newest first."""
    path = Path(path)
    kept = {}
    if path.parent.is_dir():
        for f in path.parent.glob(f"{glob.escape(path.stem)}.*{path.suffix}"):
            index = f.name[len(path.stem) + 1:-len(path.suffix)]
            if index.isdigit() and f.is_file():
                kept[int(index)] = f
    return ([path] if path.is_file() else []) + [kept[i] for i in sorted(kept)]


def _kept_path(path: Path, i: int) -> Path:
    return path.with_name(f"{path.stem}.{i}{path.suffix}")


def _with_sidecar(path: Path) -> tuple[Path, Path]:
    return path, path.with_suffix(".json")


def _keep_previous(path: Path, keep_last: int, rotate: bool) -> None:
    """Shift ``path`` → ``.1`` → ``.2`` ... keeping ``keep_last - 1`` earlier checkpoints.

    Every step is an ``os.replace`` (the latest is hard-linked, not moved), so the latest checkpoint
    exists throughout and a crash leaves at worst one kept file missing.
    """
    for stale in checkpoint_files(path)[keep_last:]:  # fewer kept than before (keep_last lowered)
        for f in _with_sidecar(stale):
            f.unlink(missing_ok=True)
    if not rotate or keep_last < 2 or not path.is_file():
        return
    for i in range(keep_last - 1, 1, -1):
        for src, dst in zip(_with_sidecar(_kept_path(path, i - 1)), _with_sidecar(_kept_path(path, i))):
            if src.is_file():
                os.replace(src, dst)
    for src, dst in zip(_with_sidecar(path), _with_sidecar(_kept_path(path, 1))):
        if src.is_file():
            tmp = dst.with_name(f".{dst.name}.link.tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:  # no hard links on this filesystem: copy
                atomic_write_bytes(dst, src.read_bytes())
                continue
            os.replace(tmp, dst)


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any],
                    keep_last: int = 1, replace_latest: bool = False) -> Path:
    """Write ``path`` (``.safetensors``) and ``path`` with ``.json`` atomically; returns the tensor file path.

    ``tensors`` keys are namespaced by the caller (``model/...``, ``ema/...``); ``metadata`` must be
    JSON-serialisable. ``keep_last``: how many checkpoints to keep, this one included (the earlier
    ones as ``<name>.1.safetensors``, ...). ``replace_latest``: overwrite the latest without keeping
    it (a second save of the same training step).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint: path must end in .safetensors, got {str(path)!r}")
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
        raise ValueError(f"save_checkpoint: keep_last must be an int >= 1, got {keep_last!r}")
    meta = {"format": CHECKPOINT_FORMAT, **metadata}
    meta_json = json.dumps(meta, sort_keys=True)
    cpu = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    digest = content_sha256(cpu, meta_json)
    blob = save(cpu, metadata={_META_KEY: meta_json, _HASH_KEY: digest})
    _keep_previous(path, keep_last, rotate=not replace_latest)
    atomic_write_bytes(path, blob)
    sidecar = {**meta, "content_sha256": digest}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return path


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved) and verify its hash.

    Accepts the ``.safetensors`` path, the ``.json`` sidecar path or a run directory holding
    ``checkpoint.safetensors``. Raises ``FileNotFoundError``/``ValueError`` naming the file
    (:class:`CheckpointIntegrityError` when the content does not match its hash). A checkpoint
    written before hashes were stored loads with a warning.
    """
    from safetensors import SafetensorError, safe_open

    path = _resolve(path)
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
    stored = header.get(_HASH_KEY)
    if stored is None:
        warnings.warn(f"checkpoint {str(path)!r} has no content hash (written by an older ebsparse); "
                      "it is loaded unverified", stacklevel=2)
    elif content_sha256(tensors, header[_META_KEY]) != stored:
        kept = checkpoint_files(path)[1:]
        hint = f"; an earlier checkpoint is kept at {str(kept[0])!r}" if kept else ""
        raise CheckpointIntegrityError(
            f"checkpoint {str(path)!r} is corrupted: its content does not match the SHA-256 written with it{hint}")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {str(path)!r} has unreadable ebsparse metadata: {e}") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} has format {meta.get('format')!r}; expected {CHECKPOINT_FORMAT!r}")
    return tensors, meta


def load_latest_good(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """Load the newest of :func:`checkpoint_files` that reads and verifies; returns (tensors, meta, file).

    Falling back past the latest warns, naming each file skipped and why, and moves each bad file
    aside to ``<file>.corrupt`` (so it is not kept in its place at the next save). Raises
    ``FileNotFoundError`` when there is no checkpoint and ``ValueError`` when none is good.
    """
    path = _resolve(path)
    candidates = checkpoint_files(path)
    if not candidates:
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found (nor any kept earlier checkpoint)")
    failures: list[tuple[Path, Exception]] = []
    for candidate in candidates:
        try:
            tensors, meta = load_checkpoint(candidate)
        except (ValueError, OSError) as e:
            failures.append((candidate, e))
            continue
        if failures:
            for bad, _ in failures:
                os.replace(bad, bad.with_name(bad.name + ".corrupt"))
            skipped = "; ".join(f"{e}" for _, e in failures)
            warnings.warn(f"{skipped}. Moved aside as *.corrupt; resuming from the earlier checkpoint "
                          f"{str(candidate)!r} (step {meta.get('step')})", stacklevel=2)
        return tensors, meta, candidate
    raise ValueError("no usable checkpoint: " + "; ".join(str(e) for _, e in failures))
