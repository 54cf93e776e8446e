"""Latent diffusion's frozen first stage: the saved autoencoder, the latent cache, the latent sample space.

An autoencoder folder (``ebsparse train-autoencoder``) holds ``autoencoder.safetensors`` and its JSON
sidecar (config, scale factor, training summary; written and verified like every checkpoint, no
pickle). :func:`load_autoencoder` returns it frozen (eval mode, no gradients).

The latent sample space (decoding through the frozen decoder) is
:class:`ebsparse.diffusion.spaces.LatentSpace`.

The dataset is encoded once: :func:`cached_latents` writes ``latents/<data key>.safetensors`` in the
autoencoder folder (the unscaled deterministic latents and the labels) and reads it on later runs.
Its metadata names the autoencoder's content hash, so a cache made by another autoencoder (one
retrained in the same folder) is detected, reported and rebuilt rather than silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import DataConfig, build_dataset
from ..models.autoencoder import Autoencoder, AutoencoderConfig
from .checkpoint import content_sha256, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from .config import ExperimentConfig

__all__ = ["AUTOENCODER_FILE", "save_autoencoder", "load_autoencoder", "FrozenAutoencoder", "encode_dataset",
           "cached_latents", "LatentDataset", "latent_dataset", "checked_latent_config"]

AUTOENCODER_FILE = "autoencoder.safetensors"
_KIND = "ebsparse-autoencoder"
_CACHE_KIND = "ebsparse-latent-cache"


def save_autoencoder(folder: str | os.PathLike, model: Autoencoder, scale_factor: float,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``folder/autoencoder.safetensors`` (+ ``.json``) atomically, no pickle."""
    if not scale_factor > 0:
        raise ValueError(f"save_autoencoder: scale_factor must be > 0, got {scale_factor}")
    meta = {"kind": _KIND, "config": model.config.to_dict(), "scale_factor": float(scale_factor), **(extra or {})}
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    return save_checkpoint(Path(folder) / AUTOENCODER_FILE, tensors, meta)


class FrozenAutoencoder:
    """A loaded autoencoder: ``model`` (frozen), ``scale_factor``, ``sha256`` (of the file's content:
    what a latent cache records) and ``path``."""

    def __init__(self, model: Autoencoder, scale_factor: float, sha256: str, path: Path, meta: dict[str, Any]):
        self.model, self.scale_factor, self.sha256, self.path, self.meta = model, scale_factor, sha256, path, meta

    @property
    def config(self) -> AutoencoderConfig:
        return self.model.config


_LOADED: dict[tuple[str, int, int], FrozenAutoencoder] = {}


def _file(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder if folder.suffix == ".safetensors" else folder / AUTOENCODER_FILE


def load_autoencoder(folder: str | os.PathLike) -> FrozenAutoencoder:
    """The autoencoder in ``folder`` (or at a ``.safetensors`` path), frozen: ``eval()`` and
    ``requires_grad`` False on every parameter. Verified against its hash; loaded once per process
    per file version. Raises ``FileNotFoundError`` naming the path when it is absent."""
    path = _file(folder)
    if not path.is_file():
        raise FileNotFoundError(f"autoencoder {str(path)!r} not found; train one first with "
                                "'ebsparse train-autoencoder CONFIG' (e.g. configs/autoencoder/digits_vq.yaml writes runs/digits_vq)")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != _KIND:
            raise ValueError(f"{str(path)!r} is not an autoencoder written by 'ebsparse train-autoencoder' "
                             f"(kind {meta.get('kind')!r})")
        model = Autoencoder(AutoencoderConfig.from_dict(meta["config"], f"{path}: config"))
        model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True)
        model.eval().requires_grad_(False)
        digest = content_sha256(tensors, json.dumps(meta, sort_keys=True))
        _LOADED[key] = FrozenAutoencoder(model, float(meta["scale_factor"]), digest, path, meta)
    return _LOADED[key]


@torch.no_grad()
def encode_dataset(model: Autoencoder, dataset, batch_size: int = 64, limit: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic latents (N, embed_dim, S/f, S/f) and labels (N,) of the first ``limit`` items
    (all by default), in order."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    device = next(model.parameters()).device
    zs, ys = [], []
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
            x, y = images[start:idx.stop], labels[start:idx.stop]
        else:
            items = [dataset[i] for i in idx]
            x = torch.stack([it[0] for it in items])
            y = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
        zs.append(model.encode(x.to(device)).cpu())
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)


def _data_key(data: DataConfig) -> str:
    return hashlib.sha256(json.dumps(data.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def cached_latents(autoencoder: FrozenAutoencoder, data: DataConfig, batch_size: int = 64,
                   log=print) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """(latents, labels, cache file) of ``data`` under ``autoencoder``: read from the cache next to
    the autoencoder when it was made by this autoencoder (same content hash), else encoded now and
    written (atomically). A cache from another autoencoder is reported through ``log`` and rebuilt."""
    path = autoencoder.path.parent / "latents" / f"{_data_key(data)}.safetensors"
    if path.is_file():
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") == _CACHE_KIND and meta.get("autoencoder_sha256") == autoencoder.sha256:
            return tensors["latents"], tensors["labels"], path
        log(f"latent cache {path} is stale (made by autoencoder {str(meta.get('autoencoder_sha256'))[:12]}, "
            f"this one is {autoencoder.sha256[:12]}): encoding the data again")
    dataset = build_dataset(data)
    log(f"encoding {len(dataset)} images of data.type={data.type} once into {path}")
    latents, labels = encode_dataset(autoencoder.model, dataset, batch_size)
    save_checkpoint(path, {"latents": latents, "labels": labels},
                    {"kind": _CACHE_KIND, "autoencoder_sha256": autoencoder.sha256, "data": data.to_dict(),
                     "shape": list(latents.shape)})
    return latents, labels, path


class LatentDataset(torch.utils.data.Dataset):
    """Scaled latents as a dataset: items (latent (C, h, w) * scale_factor, label); ``images`` and
    ``labels`` are the whole tensors (the trainer indexes them directly)."""

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor, scale_factor: float):
        self.images = (latents * scale_factor).contiguous()
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def checked_latent_config(config: "ExperimentConfig") -> tuple[FrozenAutoencoder, Any, float]:
    """The config's autoencoder, U-Net config and scale factor, after checking that data, autoencoder
    and U-Net fit together (errors name the keys)."""
    from ..models.ldm_unet import LatentDiffusionConfig

    spec = LatentDiffusionConfig.from_dict({k: v for k, v in config.model.items() if k != "type"})
    ae = load_autoencoder(spec.autoencoder)
    a, u, d = ae.config, spec.unet_config, config.data
    if d.channels != a.in_channels:
        raise ValueError(f"data.channels={d.channels} does not match the autoencoder's in_channels={a.in_channels} "
                         f"({ae.path})")
    if d.image_size % a.factor or d.image_size // a.factor != u.image_size:
        raise ValueError(f"data.image_size={d.image_size} gives {d.image_size / a.factor:g}x{d.image_size / a.factor:g} "
                         f"latents with the autoencoder's f={a.factor} ({ae.path}); model.unet.image_size is "
                         f"{u.image_size}")
    if u.in_channels != a.embed_dim or u.out_channels != a.embed_dim:
        raise ValueError(f"model.unet.in_channels={u.in_channels} and out_channels={u.out_channels} must equal the "
                         f"autoencoder's embed_dim={a.embed_dim} ({ae.path})")
    if d.random_flip:
        raise ValueError("data.random_flip must be false for model.type=ldm: latents are encoded once, and a "
                         "flipped latent is not the latent of the flipped image")
    return ae, u, spec.scale_factor if spec.scale_factor is not None else ae.scale_factor


def latent_dataset(config: "ExperimentConfig", log=print) -> LatentDataset:
    """The training set of a ``model.type: ldm`` config: its data's cached latents, scaled."""
    ae, _, scale = checked_latent_config(config)
    latents, labels, _ = cached_latents(ae, config.data, log=log)
    return LatentDataset(latents, labels, scale)
