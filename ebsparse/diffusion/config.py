"""The experiment config: one YAML file (``configs/*.yaml``) → dataclasses that rebuild everything.

Sections: ``model`` (a model type and its config fields), ``diffusion`` (:class:`DiffusionConfig`),
``data`` (:class:`DataConfig`), ``training`` (:class:`TrainConfig`), ``sampling`` (:class:`SamplingConfig`),
and optional algorithm sections (:data:`ALGORITHM_SECTIONS`: ``sparsity`` for sparse-to-sparse
training, ``earlybird`` for Early-Bird tickets), kept here as plain mappings and parsed into their
own config dataclasses by the packages that own them.
Unknown keys are errors, because a typo in a paper setting would otherwise silently change a result.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .._config import config_from_dict
from ..data import DataConfig
from .schedule import DiffusionConfig

__all__ = ["ALGORITHM_SECTIONS", "TrainConfig", "SamplingConfig", "ExperimentConfig", "load_config", "apply_overrides",
           "config_diff"]

OPTIMIZERS = ("adam", "adamw")
#: ``training.precision``: the autocast dtype of the forward and backward (fp32: no autocast). The
#: parameters, optimizer state and EMA stay float32; fp16 adds loss scaling (a GradScaler).
PRECISIONS = ("fp32", "bf16", "fp16")
#: ``training.distributed``: "none" (one process) or "fsdp" (FSDP2 ``fully_shard`` over every process
#: of a ``torchrun`` launch; see :mod:`ebsparse.diffusion.distributed`).
DISTRIBUTED = ("none", "fsdp")
#: Sections owned by algorithm packages (``ebsparse.s2s``, ``ebsparse.earlybird``); stored verbatim.
ALGORITHM_SECTIONS = ("sparsity", "earlybird")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``warmup``: steps of linear learning-rate warm-up (0 = none);
    ``grad_clip``: max global grad norm (0 = none); ``*_every``: intervals in steps (0 = never);
    ``keep_last``: checkpoints kept, the latest included (``--resume`` falls back to an earlier one
    when the latest is unreadable or fails its hash); ``precision``: one of ``PRECISIONS``, mixed
    precision under ``torch.autocast`` (sparse layers stay sparse: ``ebsparse.ops.amp``);
    ``distributed``: one of ``DISTRIBUTED`` (with "fsdp", ``batch_size`` is the global batch, split
    evenly over the processes)."""

    batch_size: int = 64
    steps: int = 1000
    optimizer: str = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float = 1.0
    ema_rate: float = 0.9999
    log_every: int = 50
    sample_every: int = 0
    ckpt_every: int = 1000
    keep_last: int = 2
    seed: int = 0
    precision: str = "fp32"
    distributed: str = "none"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("lr", "eps", "weight_decay", "grad_clip", "ema_rate"):
            setattr(self, name, float(getattr(self, name)))
        if not self.grad_clip >= 0:  # a negative one switched clipping off without a word
            raise ValueError(f"training.grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer={self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision={self.precision!r}; expected one of {PRECISIONS}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"training.distributed={self.distributed!r}; expected one of {DISTRIBUTED}")
        for name in ("batch_size", "steps", "keep_last"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"training.{name} must be a positive int, got {v!r}")
        for name in ("warmup", "log_every", "sample_every", "ckpt_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"training.{name} must be an int >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"training.ema_rate must be in [0, 1), got {self.ema_rate}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"training.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class SamplingConfig:
    """How samples are drawn (``ebsparse sample`` and the trainer's grids)."""

    sampler: str = "ddim"
    timesteps: int = 100
    eta: float = 0.0
    skip_type: str = "uniform"
    num_samples: int = 64

    def __post_init__(self) -> None:
        if self.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampling.sampler={self.sampler!r}; expected 'ddim' or 'ddpm'")
        if self.skip_type not in ("uniform", "quad"):
            raise ValueError(f"sampling.skip_type={self.skip_type!r}; expected 'uniform' or 'quad'")
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise ValueError(f"sampling.timesteps must be a positive int, got {self.timesteps!r}")
        self.eta = float(self.eta)
        if self.eta < 0:
            raise ValueError(f"sampling.eta must be >= 0, got {self.eta}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"sampling.num_samples must be a positive int, got {self.num_samples!r}")


@dataclass
class ExperimentConfig:
    model: dict[str, Any]
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    #: ``{section: mapping}`` for the :data:`ALGORITHM_SECTIONS` present in the file
    algorithms: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"a config must be a mapping of sections, got {type(d).__name__}")
        sections = {"model", "diffusion", "data", "training", "sampling", *ALGORITHM_SECTIONS}
        unknown = sorted(set(d) - sections)
        if unknown:
            raise ValueError(f"config: unknown sections {unknown}; expected a subset of {sorted(sections)}")
        if "model" not in d:
            raise ValueError("config: the 'model' section is required (e.g. model: {type: ddpm_unet, ...})")
        import torch

        from ..models import build_model, check_images, check_sequences  # validates the model section first

        algorithms = {}
        for name in ALGORITHM_SECTIONS:
            if d.get(name) is not None:
                if not isinstance(d[name], Mapping):
                    raise ValueError(f"config section '{name}' must be a mapping, got {type(d[name]).__name__}")
                algorithms[name] = copy.deepcopy(dict(d[name]))
        if not isinstance(d["model"], Mapping):
            raise ValueError(f"model: expected a mapping, got {type(d['model']).__name__}")
        model = dict(d["model"])
        with torch.device("meta"):  # shapes only: no memory, no init cost
            build_model(model)
        data = DataConfig.from_dict(d.get("data", {}))
        check_sequences(model, data.type, data.seq_len)
        check_images(model, data.image_size, data.channels)
        return cls(
            model=model,
            diffusion=DiffusionConfig.from_dict(d.get("diffusion", {})),
            data=data,
            training=config_from_dict(TrainConfig, d.get("training", {}), "training"),
            sampling=config_from_dict(SamplingConfig, d.get("sampling", {}), "sampling"),
            algorithms=algorithms,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"model": copy.deepcopy(self.model), "diffusion": self.diffusion.to_dict(), "data": self.data.to_dict(),
               "training": asdict(self.training), "sampling": asdict(self.sampling)}
        out["training"]["betas"] = list(self.training.betas)
        out.update(copy.deepcopy(self.algorithms))
        return out


def _parse_scalar(text: str) -> Any:
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; a number was meant
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict, in place."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r}: expected SECTION.KEY=VALUE, e.g. training.steps=100")
        key, value = item.split("=", 1)
        *path, leaf = key.split(".")
        node = d
        for p in path:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = _parse_scalar(value)
    return d


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config; errors name the file and the offending key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        bundled = Path(__file__).resolve().parents[2] / "configs" / f"{path.name}"
        hint = f" (a bundled config exists at {bundled})" if bundled.is_file() and bundled != path else ""
        raise FileNotFoundError(f"config file {str(path)!r} not found{hint}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    from_file = copy.deepcopy(raw)
    apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        if overrides and _valid(from_file):  # the file is fine: the --set is to blame
            # The ones that fail on their own (a key name found in the message also matched the list of
            # valid keys an unknown-key error prints, and blamed good overrides).
            named = [o for o in overrides if not _valid(apply_overrides(copy.deepcopy(from_file), [o]))] or overrides
            raise ValueError(f"--set {' --set '.join(named)}: {e}") from e
        raise ValueError(f"config file {str(path)!r}: {e}") from e


def _valid(raw: dict[str, Any]) -> bool:
    try:
        ExperimentConfig.from_dict(raw)
    except (ValueError, TypeError):
        return False
    return True


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The dotted keys whose values differ between two config dicts (``to_dict()`` form), as
    ``{key: (old, new)}``; a key missing on one side reads as ``None`` there. Tuples and lists compare
    equal, as they do once written to JSON."""
    import json

    a, b = (_flatten(json.loads(json.dumps(d))) for d in (old, new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def changes_text(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """``config_diff``'s result as an error message lists it: ``key old -> new, ...``."""
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
