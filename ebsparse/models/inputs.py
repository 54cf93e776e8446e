"""What a model of :mod:`ebsparse.models` takes as input, read from its spec (the ``model:`` section).

:func:`example_inputs` is the batch of one forward call that tracing (pruning, MAC counting) needs;
:func:`check_images` says, when a config is read, whether the data's images fit the model, so that a
mismatch is an error naming the keys instead of a tensor-size error deep in the model.
Sequence models (ChiroDiff) take (B, L, point_dim) pen-move sequences instead of images:
:func:`check_sequences` pairs them with stroke datasets.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from . import diffusers_models
from .chirodiff import ChiroDiffConfig
from .ddpm_unet import DDPMUNetConfig
from .dit import DiTConfig
from .ldm_unet import LatentDiffusionConfig

__all__ = ["example_inputs", "image_shape", "check_images", "check_sequences", "SEQUENCE_MODELS"]

IMAGE_MODELS = ("ddpm_unet", "dit")
#: models whose samples are sequences (B, L, point_dim)
SEQUENCE_MODELS = ("chirodiff",)
#: L of :func:`example_inputs` for a sequence model when the caller does not give one
DEFAULT_SEQ_LEN = 64
#: models whose inputs are latents of a frozen autoencoder (shape: the U-Net's in_channels x image_size)
LATENT_MODELS = ("ldm",)


def _config(spec: Mapping[str, Any]):
    kind = spec.get("type")
    if kind in LATENT_MODELS:
        return kind, LatentDiffusionConfig.from_dict({k: v for k, v in spec.items() if k != "type"}).unet_config
    if kind not in IMAGE_MODELS:
        raise ValueError(f"model.type={kind!r} has no image inputs; expected one of {IMAGE_MODELS + LATENT_MODELS}")
    config_cls = DDPMUNetConfig if kind == "ddpm_unet" else DiTConfig
    return kind, config_cls.from_dict({k: v for k, v in spec.items() if k != "type"})


def image_shape(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(channels, size) of the square images the model generates (a latent model: of its latents)."""
    if spec.get("type") == "diffusers":
        return diffusers_models.image_shape(spec)
    kind, cfg = _config(spec)
    if kind in LATENT_MODELS:
        return cfg.in_channels, cfg.image_size
    return (cfg.in_channels, cfg.resolution) if kind == "ddpm_unet" else (cfg.in_channels, cfg.input_size)


def example_inputs(spec: Mapping[str, Any], device: str | torch.device = "cpu", resolution: int | None = None,
                   batch: int = 1, seq_len: int | None = None) -> tuple[torch.Tensor, ...]:
    """Zero inputs of one forward call: ``(x, t)`` for ``ddpm_unet``, ``ldm`` (x: latents) and ``chirodiff``, ``(x, t, y)``
    for ``dit``.

    ``x`` is (batch, C, R, R) float32 (ChiroDiff: (batch, L, point_dim), L = ``seq_len``, default
    :data:`DEFAULT_SEQ_LEN`), ``t`` and ``y`` (batch,) int64; ``resolution`` overrides R (the U-Net
    runs at any size its down-sampling divides).
    """
    if spec.get("type") == "diffusers":
        return diffusers_models.example_inputs(spec, device, resolution, batch)
    if spec.get("type") in SEQUENCE_MODELS:
        cfg = ChiroDiffConfig.from_dict({k: v for k, v in spec.items() if k != "type"})
        x = torch.zeros(batch, seq_len or DEFAULT_SEQ_LEN, cfg.point_dim, device=device)
        return x, torch.zeros(batch, dtype=torch.long, device=device)
    kind, _ = _config(spec)
    c, r = image_shape(spec)
    if kind != "dit":
        r = resolution or r
    x = torch.zeros(batch, c, r, r, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    return (x, labels, labels.clone()) if kind == "dit" else (x, labels)


def check_images(spec: Mapping[str, Any], image_size: int, channels: int) -> None:
    """Raise ``ValueError`` naming ``data.*`` and ``model.*`` when images of ``image_size`` pixels and
    ``channels`` channels cannot go through the model. Models without image inputs are not checked."""
    if spec.get("type") == "diffusers":
        return diffusers_models.check_images(spec, image_size, channels)
    if spec.get("type") not in IMAGE_MODELS:
        return
    kind, cfg = _config(spec)
    if channels != cfg.in_channels:
        raise ValueError(f"data.channels={channels} does not match model.in_channels={cfg.in_channels}")
    if kind == "ddpm_unet":
        factor = 2 ** (len(cfg.ch_mult) - 1)
        if image_size % factor:
            raise ValueError(f"data.image_size={image_size} must be divisible by {factor}: the U-Net halves it "
                             f"{len(cfg.ch_mult) - 1} times (model.ch_mult={list(cfg.ch_mult)})")
    elif image_size != cfg.input_size:
        raise ValueError(f"data.image_size={image_size} does not match model.input_size={cfg.input_size} "
                         "(DiT's position table is built for one size)")


def check_sequences(spec: Mapping[str, Any], data_type: str, seq_len: int | None) -> None:
    """Raise ``ValueError`` naming ``model.type`` and ``data.type`` when a sequence model is paired
    with image data or an image model with stroke sequences (``seq_len`` is None for image data)."""
    kind = spec.get("type")
    if kind in SEQUENCE_MODELS and seq_len is None:
        raise ValueError(f"model.type={kind!r} generates stroke sequences; data.type={data_type!r} holds images "
                         "(use a stroke dataset: data.type kanjivg or quickdraw)")
    if kind not in SEQUENCE_MODELS and seq_len is not None:
        raise ValueError(f"data.type={data_type!r} holds stroke sequences, which model.type={kind!r} cannot "
                         f"generate (use model.type chirodiff)")
    if kind in SEQUENCE_MODELS:
        point_dim = ChiroDiffConfig.from_dict({k: v for k, v in spec.items() if k != "type"}).point_dim
        if point_dim != 3:
            raise ValueError(f"model.point_dim={point_dim}: data.type={data_type!r} gives (dx, dy, pen) points, "
                             "so it must be 3")
