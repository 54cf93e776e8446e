"""The ``earlybird:`` section of an experiment config, with the papers' defaults.

Unknown keys are errors (a typo would otherwise silently change a paper setting).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .._config import config_from_dict
from ..pruning.config import WIDTH_RULES
from .regions import Region, parse_regions, validate_regions

__all__ = ["BASELINES", "EarlyBirdConfig"]

#: Baselines the papers compare against: the unpruned model, the ticket's structure re-initialised
#: and trained from scratch, and train (dense, full length) -> prune -> finetune.
BASELINES = ("dense", "scratch", "train_prune_finetune")
IMPORTANCES = ("magnitude", "taylor")
REGION_TRAINING = ("routed", "sequential")


@dataclass
class EarlyBirdConfig:
    """Early-Bird (EB) and timestep-aware Early-Bird (TA-EB) ticket settings.

    - ``pruning_ratio``: the EB ticket's per-group channel pruning ratio, in [0, 1).
    - ``importance``: ``magnitude`` (the reference) or ``taylor``, for the EB ticket.
    - ``eta``: largest normalised Hamming distance that counts as "the mask stopped changing" (0.1).
    - ``queue_length``: masks in the FIFO; the newest is compared with the ``queue_length - 1`` before it (5).
    - ``pseudo_epoch_steps``: steps between two masks; ``None`` = one real epoch (dataset // batch).
    - ``max_search_steps``: give up the ticket search after this many dense steps (``None`` =
      ``training.steps``); without a ticket, the last mask is used and the report says so.
    - ``regions``: TA-EB regions, a preset name (``cifar10-3`` (default), ``cifar10-2``, ``cifar10-4``)
      or a list of ``{low, high, pruning_ratio}``.
    - ``region_importance``: ``magnitude`` (each region's ticket is the EB ticket at its ratio, as in
      the reference) or ``taylor`` (first-order Taylor from that region's timesteps only).
    - ``region_training``: ``sequential`` (default: every region model on full batches from its own
      timesteps, one after the other on one device, each starting at its own ticket; the report
      times them as the papers run them, in parallel) or ``routed`` (one process; each sample of a
      batch goes to its region's model, all region models step together from the last ticket).
      Multi-process training is ``torchrun ... ebsparse eb-train``.
    - ``finetune_steps``: steps of the EB ticket's training after the ticket; ``None`` = the EB
      budget ``eb_budget * training.steps`` minus the ticket step.
    - ``eb_budget``: the EB chain's iterations (search + training) as a fraction of the dense
      ``training.steps`` (the paper's CIFAR-10 setting: 1.0, EB trains as long as dense).
    - ``region_steps``: steps of each TA-EB region model's training after its own ticket: one int
      for every region, or a list with one per region; ``None`` = ``region_budget * training.steps``
      minus that region's ticket step.
    - ``region_budget``: each region chain's iterations (search + its own training) as a fraction of
      the dense ``training.steps`` (the paper's CIFAR-10 setting: 0.25, 200K of 800K).
    - ``finetune_warmup``: learning-rate warm-up steps of every training after a ticket (a fresh
      optimizer meets already trained weights); ``None`` = ``training.warmup``.
    - ``baselines``: subset of ``dense``, ``scratch``, ``train_prune_finetune``.
    - ``eval_samples``: images sampled per method for the sample grid and FID.
    - ``taylor_batch_size``: images per Taylor-importance gradient batch.
    - ``attention``, ``head_dim_multiple``: how multi-head attention is pruned (whole ``heads`` or
      every head's ``width``, rounded to the multiple); see :class:`ebsparse.pruning.PruningConfig`.
    - ``widths``: ``groups`` (the reference's per-group rule) or ``diffusers`` (widths tied so that a
      diffusers ``UNet2DModel`` ticket is described by its config: ``ebsparse export --diffusers``).
    - ``ignored_layers``: module names whose output channels are never pruned (``None``: the output
      layer only, as the reference). Giving a list replaces that default, so name the output layer
      too: the Early-Bird paper's DiT table keeps the residual width whole
      (``[x_embedder.proj, final_layer.linear]``, see ``configs/imagenet256_dit_xl2.yaml``).
    """

    pruning_ratio: float = 0.3
    importance: str = "magnitude"
    eta: float = 0.1
    queue_length: int = 5
    pseudo_epoch_steps: int | None = None
    max_search_steps: int | None = None
    regions: tuple[Region, ...] = field(default_factory=lambda: parse_regions("cifar10-3"))
    region_importance: str = "magnitude"
    region_training: str = "sequential"
    finetune_steps: int | None = None
    eb_budget: float = 1.0
    region_steps: int | tuple[int, ...] | None = None
    region_budget: float = 0.25
    finetune_warmup: int | None = None
    baselines: tuple[str, ...] = ("dense",)
    eval_samples: int = 256
    taylor_batch_size: int = 16
    attention: str = "width"
    head_dim_multiple: int = 8
    widths: str = "groups"
    ignored_layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.regions = parse_regions(self.regions)
        self.baselines = tuple(self.baselines) if not isinstance(self.baselines, str) else (self.baselines,)
        if self.ignored_layers is not None:
            self.ignored_layers = tuple(self.ignored_layers)
        self.validate()

    def validate(self, num_timesteps: int | None = None) -> None:
        """Raise ``ValueError`` naming the key and what it must be."""
        r = self.pruning_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise ValueError(f"earlybird.pruning_ratio must be a number in [0, 1), got {r!r}")
        self.pruning_ratio = float(r)
        for name in ("importance", "region_importance"):
            if getattr(self, name) not in IMPORTANCES:
                raise ValueError(f"earlybird.{name} must be one of {IMPORTANCES}, got {getattr(self, name)!r}")
        if self.attention not in ("width", "heads"):
            raise ValueError(f"earlybird.attention must be 'width' or 'heads', got {self.attention!r}")
        if isinstance(self.head_dim_multiple, bool) or not isinstance(self.head_dim_multiple, int) \
                or self.head_dim_multiple < 1:
            raise ValueError(f"earlybird.head_dim_multiple must be a positive int, got {self.head_dim_multiple!r}")
        if self.widths not in WIDTH_RULES:
            raise ValueError(f"earlybird.widths must be one of {WIDTH_RULES}, got {self.widths!r}")
        if self.region_training not in REGION_TRAINING:
            raise ValueError(f"earlybird.region_training must be one of {REGION_TRAINING}, got {self.region_training!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"earlybird.eta must be a number in [0, 1], got {self.eta!r}")
        self.eta = float(self.eta)
        if isinstance(self.queue_length, bool) or not isinstance(self.queue_length, int) or self.queue_length < 2:
            raise ValueError(f"earlybird.queue_length must be an int >= 2, got {self.queue_length!r}")
        for name in ("pseudo_epoch_steps", "max_search_steps", "finetune_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"earlybird.{name} must be a positive int or null, got {v!r}")
        for name in ("eb_budget", "region_budget"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 10.0:
                raise ValueError(f"earlybird.{name} must be a fraction of training.steps in (0, 10], got {v!r}")
            setattr(self, name, float(v))
        rs = self.region_steps
        if isinstance(rs, (list, tuple)):
            if len(rs) != len(self.regions) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in rs):
                raise ValueError(f"earlybird.region_steps must be one int >= 0 per region ({len(self.regions)} "
                                 f"regions), got {list(rs)!r}")
            self.region_steps = tuple(rs)
        elif rs is not None and (isinstance(rs, bool) or not isinstance(rs, int) or rs < 0):
            raise ValueError(f"earlybird.region_steps must be an int >= 0, a list of them (one per region) or "
                             f"null, got {rs!r}")
        w = self.finetune_warmup
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"earlybird.finetune_warmup must be an int >= 0 or null, got {w!r}")
        for name in ("eval_samples", "taylor_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"earlybird.{name} must be a positive int, got {v!r}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"earlybird.baselines: unknown {bad}; expected a subset of {BASELINES}")
        if num_timesteps is not None:
            validate_regions(self.regions, num_timesteps)

    def eb_finetune_steps(self, dense_steps: int, ticket_step: int) -> int:
        """Steps the EB ticket trains after its ticket (``finetune_steps`` or what the budget leaves)."""
        if self.finetune_steps is not None:
            return self.finetune_steps
        return max(0, round(self.eb_budget * dense_steps) - ticket_step)

    def region_train_steps(self, index: int, dense_steps: int, ticket_step: int) -> int:
        """Steps region ``index`` trains after its own ticket (``region_steps`` or what the budget leaves)."""
        if isinstance(self.region_steps, tuple):
            return self.region_steps[index]
        if self.region_steps is not None:
            return self.region_steps
        return max(0, round(self.region_budget * dense_steps) - ticket_step)

    def tracked_ratios(self, ta_eb: bool) -> list[float]:
        """Ratios whose tickets the dense search tracks (EB's, plus each region's for TA-EB)."""
        ratios = [self.pruning_ratio]
        if ta_eb:
            ratios += [r.pruning_ratio for r in self.regions]
        return sorted(set(ratios))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, num_timesteps: int | None = None) -> EarlyBirdConfig:
        if isinstance(d, Mapping) and isinstance(d.get("baselines"), str):
            d = {**d, "baselines": [d["baselines"]]}
        cfg = config_from_dict(cls, {} if d is None else d, "earlybird")
        try:
            cfg.validate(num_timesteps)
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("earlybird") else f"earlybird: {e}") from e
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["regions"] = [r.to_dict() for r in self.regions]
        out["baselines"] = list(self.baselines)
        if isinstance(self.region_steps, tuple):
            out["region_steps"] = list(self.region_steps)
        return out
