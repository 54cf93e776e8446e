"""The diffusion models the papers use, each rebuilt from a config dataclass.

``build_model({"type": "ddpm_unet", ...})`` is how YAML configs become modules; adding a model means
adding one row to :data:`MODEL_TYPES`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from .chirodiff import ChiroDiff, ChiroDiffConfig
from .ddpm_unet import DDPMUNet, DDPMUNetConfig
from .diffusers_models import DiffusersModel, DiffusersModelConfig
from .dit import DIT_SIZES, DiT, DiTConfig, dit_config
from .ldm_unet import LatentDiffusionConfig, LDMUNet, LDMUNetConfig, build_latent_unet
from .inputs import SEQUENCE_MODELS, check_images, check_sequences, example_inputs, image_shape

__all__ = ["ChiroDiff", "ChiroDiffConfig", "DDPMUNet", "DDPMUNetConfig", "DiffusersModel", "DiffusersModelConfig", "DiT",
           "DiTConfig", "DIT_SIZES", "dit_config", "LDMUNet", "LDMUNetConfig", "LatentDiffusionConfig", "MODEL_TYPES",
           "build_model", "example_inputs", "image_shape", "check_images", "check_sequences", "SEQUENCE_MODELS"]

#: type name -> (config class, model class)
MODEL_TYPES: dict[str, tuple[Any, Callable[..., nn.Module]]] = {
    "ddpm_unet": (DDPMUNetConfig, DDPMUNet),
    "dit": (DiTConfig, DiT),
    "chirodiff": (ChiroDiffConfig, ChiroDiff),
    "diffusers": (DiffusersModelConfig, DiffusersModel),
    "ldm": (LatentDiffusionConfig, build_latent_unet),
}


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build a model from a mapping with a ``type`` key and that type's config fields."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"model config must be a mapping with a 'type' key (one of {sorted(MODEL_TYPES)}), got {spec!r}")
    fields = dict(spec)
    kind = fields.pop("type")
    if kind not in MODEL_TYPES:
        raise ValueError(f"model.type={kind!r} is unknown; expected one of {sorted(MODEL_TYPES)}")
    config_cls, model_cls = MODEL_TYPES[kind]
    return model_cls(config_cls.from_dict(fields, "model"))
