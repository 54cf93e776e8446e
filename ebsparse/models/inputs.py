"""What a model of :mod:`ebsparse.models` takes as input, read from its spec (the ``model:`` section).

:func:`example_inputs` is the batch of one forward call that tracing (pruning, MAC counting) needs;
:func:`check_images` says, when a config is read, whether the data's images fit the model, so that a
mismatch is an error naming the keys instead of a tensor-size error deep in the model.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .ddpm_unet import DDPMUNetConfig
from .dit import DiTConfig
from .ldm_unet import LatentDiffusionConfig

__all__ = ["example_inputs", "image_shape", "check_images"]

IMAGE_MODELS = ("ddpm_unet", "dit")
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
    kind, cfg = _config(spec)
    if kind in LATENT_MODELS:
        return cfg.in_channels, cfg.image_size
    return (cfg.in_channels, cfg.resolution) if kind == "ddpm_unet" else (cfg.in_channels, cfg.input_size)


def example_inputs(spec: Mapping[str, Any], device: str | torch.device = "cpu", resolution: int | None = None,
                   batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero inputs of one forward call: ``(x, t)`` for ``ddpm_unet`` and ``ldm`` (x: latents), ``(x, t, y)``
    for ``dit``.

    ``x`` is (batch, C, R, R) float32, ``t`` and ``y`` (batch,) int64; ``resolution`` overrides R
    (the U-Net runs at any size its down-sampling divides).
    """
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
