"""The pruner's knobs as one dataclass, so that a prune can be described, saved and replayed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .._config import config_from_dict
from .errors import PruningError

__all__ = ["IMPORTANCES", "PruningConfig", "WIDTH_RULES"]

IMPORTANCES = ("magnitude", "taylor", "uniform")
WIDTH_RULES = ("groups", "diffusers")


@dataclass
class PruningConfig:
    """How channels are chosen. Defaults are the reference code base's (EBD / Diff-Pruning).

    - ``pruning_ratio``: fraction of each group's channels removed, in [0, 1); per group, never global.
    - ``importance``: ``"magnitude"`` (L2 of producer and consumer weights), ``"taylor"`` (first order,
      needs a loss) or ``"uniform"`` (all equal, lowest index pruned first; for counting only).
    - ``round_to``: if set, the kept channel count of every group is rounded to a multiple of it
      (and of the group's GroupNorm/head partitions), for hardware-friendly widths.
    - ``ignored_layers``: module names whose output channels are never pruned; ``None`` means only
      the output layer (the last Conv/Linear run), as the reference ignores only ``conv_out``.
    - ``on_unsupported``: ``"error"`` raises when a group the ratio would prune holds a layer the
      pruner cannot shrink; ``"skip"`` leaves such groups whole.
    - ``taylor_t_range``: inclusive timestep range ``(lo, hi)`` the Taylor gradients are drawn from.
    - ``attention``: how multi-head attention inner widths are pruned: ``"width"`` (every head keeps
      the same, narrower width) or ``"heads"`` (whole heads go; the head width stays).
    - ``head_dim_multiple``: with ``"width"``, the kept head width is rounded to a multiple of this
      (8: tensor-core and SIMD friendly); 1 keeps the reference's exact per-group rule. Single-head
      attention (the DDPM U-Net's) is an ordinary group: ``round_to`` applies, so the papers' U-Net
      counts stay the reference's.
    - ``widths``: ``"groups"`` (every group its own kept count: the reference's rule) or
      ``"diffusers"`` (the counts tied so that a diffusers ``UNet2DModel`` inside the model stays
      one that its config describes, for ``save_pretrained``; see :mod:`ebsparse.pruning.widths`).
    """

    pruning_ratio: float = 0.5
    importance: str = "magnitude"
    round_to: int | None = None
    ignored_layers: Sequence[str] | None = None
    on_unsupported: str = "error"
    taylor_t_range: tuple[int, int] = (0, 999)
    taylor_batches: int = 1
    attention: str = "width"
    head_dim_multiple: int = 8
    widths: str = "groups"

    def __post_init__(self) -> None:
        if self.ignored_layers is not None:
            self.ignored_layers = tuple(self.ignored_layers)
        self.taylor_t_range = tuple(int(t) for t in self.taylor_t_range)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`PruningError` naming the field and what it must be."""
        r = self.pruning_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise PruningError(f"PruningConfig.pruning_ratio must be a number in [0, 1), got {r!r}")
        self.pruning_ratio = float(r)
        if self.importance not in IMPORTANCES:
            raise PruningError(f"PruningConfig.importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise PruningError(f"PruningConfig.round_to must be None or a positive int, got {self.round_to!r}")
        if self.on_unsupported not in ("error", "skip"):
            raise PruningError(f"PruningConfig.on_unsupported must be 'error' or 'skip', got {self.on_unsupported!r}")
        lo_hi = self.taylor_t_range
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
            raise PruningError(f"PruningConfig.taylor_t_range must be (lo, hi) with 0 <= lo <= hi, got {lo_hi!r}")
        if self.attention not in ("width", "heads"):
            raise PruningError(f"PruningConfig.attention must be 'width' or 'heads', got {self.attention!r}")
        if isinstance(self.head_dim_multiple, bool) or not isinstance(self.head_dim_multiple, int) \
                or self.head_dim_multiple < 1:
            raise PruningError(f"PruningConfig.head_dim_multiple must be a positive int, got {self.head_dim_multiple!r}")
        if self.widths not in WIDTH_RULES:
            raise PruningError(f"PruningConfig.widths must be one of {WIDTH_RULES}, got {self.widths!r}")
        if not isinstance(self.taylor_batches, int) or self.taylor_batches < 1:
            raise PruningError(f"PruningConfig.taylor_batches must be a positive int, got {self.taylor_batches!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ignored_layers"] = None if self.ignored_layers is None else list(self.ignored_layers)
        d["taylor_t_range"] = list(self.taylor_t_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "pruning") -> PruningConfig:
        """Read a mapping (a recipe's ``pruning`` entry); wrong keys or types raise naming ``key.field``."""
        return config_from_dict(cls, d, key, error=PruningError)
