"""diffusers' models as a model type: ``model: {type: diffusers, class: UNet2DModel, config: {...}}``.

The YAML names a diffusers class and either its constructor arguments (``config``) or a local folder
written by ``save_pretrained`` (``pretrained``; loaded with ``local_files_only=True``: nothing is
downloaded). :class:`DiffusersModel` wraps the diffusers module (``inner``) in this project's calls:
``model(x, t) -> eps`` for unconditional models, and for class-conditional ones the interface of
our DiT (``class_conditional``, ``num_classes``, ``eps(x, t, y, generator)``), so the trainer,
samplers, pruning, Early-Bird and sparse-to-sparse training take it like any other model.

- ``UNet2DModel``: unconditional, or class-conditional when its config sets ``num_class_embeds``.
- ``DiTTransformer2DModel``: class-conditional on ``num_embeds_ada_norm`` classes; diffusers' own
  label dropout (10% to the null class while training) gives classifier-free guidance training; it
  draws from the global torch RNG, which checkpoints hold, so ``--resume`` stays exact. With
  ``out_channels = 2 * in_channels`` (learned sigma) the first half is the epsilon prediction.
- ``UNet2DConditionModel`` needs ``encoder_hidden_states``. There is no text here, so the context
  is one learned token per class (``num_classes``: an embedding of the digit label, with one more
  row for "no label", taken with probability ``class_dropout_prob`` while training, drawn from the
  trainer's generator); without ``num_classes`` the model is unconditional and its context is one
  learned token. The table lives next to ``inner`` (``context_embedding``), so it is trained, pruned
  (its width is ``cross_attention_dim``, kept whole) and saved with the model, but not part of a
  diffusers export.

Any other key, a class name diffusers does not have here, a constructor argument the class does
not take, or a missing folder is an error naming ``model.<key>``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["DIFFUSERS_CLASSES", "DiffusersModel", "DiffusersModelConfig", "check_images", "example_inputs",
           "image_shape", "diffusers_config"]

#: The diffusers classes this model type builds.
DIFFUSERS_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel")
_KEYS = ("type", "class", "config", "pretrained", "num_classes", "class_dropout_prob")


def _diffusers_class(name: str):
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("model.type 'diffusers' needs the diffusers package (pip install 'ebsparse[diffusers]'; "
                          "requirements-test.txt pins the tested version)") from e
    return getattr(diffusers, name)


@dataclass
class DiffusersModelConfig:
    """The ``model:`` section of a diffusers model (``class`` is stored as ``class_name``)."""

    class_name: str
    config: dict[str, Any] | None = None
    pretrained: str | None = None
    num_classes: int | None = None
    class_dropout_prob: float = 0.0
    #: the constructor arguments with the class's defaults filled in (read from ``pretrained``'s
    #: ``config.json`` when given); derived, not part of the YAML
    resolved: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "model") -> "DiffusersModelConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"{key}: expected a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise ValueError(f"{key}: unknown keys {unknown} for type 'diffusers'; expected a subset of {list(_KEYS)}")
        name = d.get("class")
        if name not in DIFFUSERS_CLASSES:
            raise ValueError(f"{key}.class={name!r}: expected one of {list(DIFFUSERS_CLASSES)}")
        config, pretrained = d.get("config"), d.get("pretrained")
        if (config is None) == (pretrained is None):
            raise ValueError(f"{key}: give exactly one of {key}.config (the {name} constructor arguments) and "
                             f"{key}.pretrained (a local folder written by save_pretrained)")
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"{key}.config: expected a mapping of {name} arguments, got {type(config).__name__}")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ValueError(f"{key}.pretrained: expected a folder path (a string), got {pretrained!r}")
        num_classes, p = d.get("num_classes"), d.get("class_dropout_prob", 0.0)
        if (num_classes is not None or "class_dropout_prob" in d) and name != "UNet2DConditionModel":
            raise ValueError(f"{key}.num_classes / {key}.class_dropout_prob are for UNet2DConditionModel (its label "
                             f"context); {name} takes its classes from {key}.config "
                             f"({'num_embeds_ada_norm' if name == 'DiTTransformer2DModel' else 'num_class_embeds'})")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"{key}.num_classes: expected a positive integer, got {num_classes!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"{key}.class_dropout_prob: expected a number in [0, 1), got {p!r}")
        if p > 0 and num_classes is None:
            raise ValueError(f"{key}.class_dropout_prob={p} needs {key}.num_classes (labels to drop)")
        out = cls(name, None if config is None else dict(config), pretrained, num_classes, float(p))
        out.resolved = _resolve(out, key)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {"type": "diffusers", "class": self.class_name}
        d.update({k: v for k, v in asdict(self).items()
                  if k in ("config", "pretrained", "num_classes") and v is not None})
        if self.class_dropout_prob:
            d["class_dropout_prob"] = self.class_dropout_prob
        return d


def _resolve(cfg: DiffusersModelConfig, key: str) -> dict[str, Any]:
    """The class's constructor arguments, defaults filled in; checks keys (and a folder's class)."""
    params = inspect.signature(_diffusers_class(cfg.class_name).__init__).parameters
    defaults = {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}
    if cfg.pretrained is not None:
        folder = Path(cfg.pretrained)
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}.pretrained={cfg.pretrained!r}: no such folder (nothing is downloaded: "
                                    "give a local folder written by save_pretrained)")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{key}.pretrained={cfg.pretrained!r} holds no config.json (expected a folder "
                                    "written by save_pretrained; for a pipeline folder, name its model subfolder)")
        saved = json.loads((folder / "config.json").read_text())
        if saved.get("_class_name", cfg.class_name) != cfg.class_name:
            raise ValueError(f"{key}.pretrained={cfg.pretrained!r} holds a {saved['_class_name']}, "
                             f"not the {key}.class={cfg.class_name!r}")
        given = {k: v for k, v in saved.items() if not k.startswith("_") and k in defaults}
    else:
        unknown = sorted(set(cfg.config) - set(defaults))
        if unknown:
            raise ValueError(f"{key}.config: {unknown} are not {cfg.class_name} arguments; "
                             f"expected a subset of {sorted(defaults)}")
        given = dict(cfg.config)
    resolved = {**defaults, **given}
    _check_supported(cfg.class_name, resolved, key, cfg)
    return resolved


def _check_supported(name: str, c: Mapping[str, Any], key: str, cfg: DiffusersModelConfig) -> None:
    """What the (x, t[, y]) call cannot feed is refused here rather than failing inside diffusers."""
    where = f"{key}.config" if cfg.pretrained is None else f"{key}.pretrained's config.json"
    size = c.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"{where}: sample_size={size!r}: this project's images are square")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{where}: sample_size must be a positive int (the image size), got {c.get('sample_size')!r}")
    if name == "UNet2DModel" and c.get("class_embed_type") is not None:
        raise ValueError(f"{where}: class_embed_type={c['class_embed_type']!r} is not supported; class labels go "
                         "through num_class_embeds")
    if name == "UNet2DConditionModel":
        for arg in ("class_embed_type", "addition_embed_type", "encoder_hid_dim", "num_class_embeds",
                    "time_cond_proj_dim"):
            if c.get(arg) is not None:
                raise ValueError(f"{where}: {arg}={c[arg]!r} is not supported (the context is "
                                 f"{key}.num_classes' learned label tokens)")
        if isinstance(c.get("cross_attention_dim"), bool) or not isinstance(c.get("cross_attention_dim"), int):
            raise ValueError(f"{where}: cross_attention_dim must be one int (the learned context's width), "
                             f"got {c.get('cross_attention_dim')!r}")
    if name == "DiTTransformer2DModel":
        n = c.get("num_embeds_ada_norm")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}: num_embeds_ada_norm (the number of classes) must be a positive int, got {n!r}")
        out = c.get("out_channels") or c["in_channels"]
        if out not in (c["in_channels"], 2 * c["in_channels"]):
            raise ValueError(f"{where}: out_channels={out} must be in_channels={c['in_channels']} or twice it "
                             "(learned sigma)")


def _sample_size(c: Mapping[str, Any]) -> int:
    size = c["sample_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _is_meta_build() -> bool:
    return torch.get_default_device().type == "meta"


class DiffusersModel(nn.Module):
    """A diffusers model (``inner``) called as ``(x, t[, y]) -> eps``; see the module docstring.

    ``x``: (B, C, S, S) float, ``t``: (B,) int64 timesteps, ``y``: (B,) int64 labels in
    ``[0, num_classes)`` (class-conditional models only). Returns the epsilon prediction (B, C, S, S).
    """

    def __init__(self, config: DiffusersModelConfig):
        super().__init__()
        self.config = config
        cls = _diffusers_class(config.class_name)
        c = config.resolved
        try:
            if config.pretrained is not None and not _is_meta_build():
                self.inner = cls.from_pretrained(config.pretrained, local_files_only=True)
            else:  # a config, or shapes only (configs are validated on the meta device)
                self.inner = cls.from_config(dict(c))
        except (ValueError, TypeError, KeyError, OSError) as e:
            where = "model.config" if config.pretrained is None else f"model.pretrained={config.pretrained!r}"
            raise ValueError(f"{where}: diffusers' {config.class_name} refused it: {e}") from e
        self.in_channels = int(c["in_channels"])
        self.image_size = _sample_size(c)
        if config.class_name == "UNet2DConditionModel":
            rows = (config.num_classes or 0) + 1  # the last row: no label
            self.context_embedding = nn.Embedding(rows, int(c["cross_attention_dim"]))
            nn.init.normal_(self.context_embedding.weight, std=0.02)
            self.class_conditional = config.num_classes is not None
            self._classes = config.num_classes or 0
        elif config.class_name == "DiTTransformer2DModel":
            self.class_conditional, self._classes = True, int(c["num_embeds_ada_norm"])
        else:
            self._classes = int(c.get("num_class_embeds") or 0)
            self.class_conditional = self._classes > 0

    @property
    def num_classes(self) -> int:
        return self._classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator`` draws the label dropout of ``UNet2DConditionModel`` (``None``: the global RNG)."""
        c, s = self.in_channels, self.image_size
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"{self.config.class_name} expects x of shape (B, {c}, H, W), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"{self.config.class_name} expects t of shape ({x.shape[0]},), got {tuple(t.shape)}")
        if self.class_conditional != (y is not None):
            call = "model(x, t, y)" if self.class_conditional else "model(x, t)"
            raise ValueError(f"{self.config.class_name} is {'' if self.class_conditional else 'not '}"
                             f"class-conditional: call it as {call}")
        if y is not None and y.shape != (x.shape[0],):
            raise ValueError(f"{self.config.class_name} expects y of shape ({x.shape[0]},), got {tuple(y.shape)}")
        name = self.config.class_name
        if name == "UNet2DModel":
            out = self.inner(x, t, class_labels=y).sample
        elif name == "DiTTransformer2DModel":
            if x.shape[2:] != (s, s):
                raise ValueError(f"DiTTransformer2DModel expects {s}x{s} inputs (model.config.sample_size), "
                                 f"got {tuple(x.shape[2:])}")
            out = self.inner(x, timestep=t, class_labels=y).sample
        else:
            out = self.inner(x, t, encoder_hidden_states=self.context(y, x.shape[0], x.device, generator)).sample
        return out[:, :c]  # learned sigma: the first half is epsilon

    def context(self, y: torch.Tensor | None, batch: int, device: torch.device,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``UNet2DConditionModel``'s ``encoder_hidden_states``: (B, 1, cross_attention_dim)."""
        null = torch.full((batch,), self._classes, dtype=torch.long, device=device)
        if y is None:
            idx = null
        else:
            idx = y
            p = self.config.class_dropout_prob
            if self.training and p > 0:
                drop = torch.rand(batch, generator=generator, device="cpu" if generator is not None else device) < p
                idx = torch.where(drop.to(device), null, y)
        return self.context_embedding(idx)[:, None, :]

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """The epsilon prediction of a class-conditional model (what the trainer and samplers call)."""
        return self.forward(x, t, y, generator)


# --- what the model takes (ebsparse.models.inputs delegates here) ------------------------------

def diffusers_config(spec: Mapping[str, Any]) -> DiffusersModelConfig:
    return DiffusersModelConfig.from_dict({k: v for k, v in spec.items()}, "model")


def _conditional(cfg: DiffusersModelConfig) -> bool:
    c = cfg.resolved
    if cfg.class_name == "DiTTransformer2DModel":
        return True
    if cfg.class_name == "UNet2DConditionModel":
        return cfg.num_classes is not None
    return c.get("num_class_embeds") is not None


def image_shape(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(channels, size) of the square images: the config's ``in_channels`` and ``sample_size``."""
    cfg = diffusers_config(spec)
    return int(cfg.resolved["in_channels"]), _sample_size(cfg.resolved)


def example_inputs(spec: Mapping[str, Any], device: str | torch.device = "cpu", resolution: int | None = None,
                   batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero inputs of one call: ``(x, t)``, or ``(x, t, y)`` for a class-conditional model."""
    cfg = diffusers_config(spec)
    c, r = image_shape(spec)
    if cfg.class_name != "DiTTransformer2DModel":
        r = resolution or r
    x = torch.zeros(batch, c, r, r, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    return (x, labels, labels.clone()) if _conditional(cfg) else (x, labels)


def check_images(spec: Mapping[str, Any], image_size: int, channels: int) -> None:
    """Raise ``ValueError`` naming ``data.*`` and ``model.*`` when the data's images do not fit."""
    cfg = diffusers_config(spec)
    c = cfg.resolved
    where = "model.config" if cfg.pretrained is None else "model.pretrained's config"
    if channels != c["in_channels"]:
        raise ValueError(f"data.channels={channels} does not match {where}.in_channels={c['in_channels']}")
    if image_size != _sample_size(c):
        raise ValueError(f"data.image_size={image_size} does not match {where}.sample_size={c['sample_size']} "
                         "(samples are drawn, and a diffusers pipeline samples, at sample_size)")
    if cfg.class_name != "DiTTransformer2DModel":
        factor = 2 ** (len(c["block_out_channels"]) - 1)
        if image_size % factor:
            raise ValueError(f"data.image_size={image_size} must be divisible by {factor}: the U-Net halves it "
                             f"{len(c['block_out_channels']) - 1} times ({where}.block_out_channels)")
    elif image_size % int(c["patch_size"]):
        raise ValueError(f"data.image_size={image_size} must be divisible by {where}.patch_size={c['patch_size']}")
