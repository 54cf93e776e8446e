"""The one config object behind Static-DM, RigL-DM and MagRan-DM, with the paper's defaults.

The ``sparsity:`` section of an experiment YAML parses into :class:`SparsityConfig`; unknown keys and
out-of-range values raise a ``ValueError`` that names the key and what was expected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ebsparse.formats.block import SUPPORTED_BLOCKS

from .._config import config_from_dict

__all__ = ["SparsityConfig", "METHODS", "DISTRIBUTIONS", "LAYER_KINDS", "DECAYS", "GRANULARITIES"]

METHODS = ("static", "rigl", "magran")
DISTRIBUTIONS = ("erk", "er", "uniform")
LAYER_KINDS = ("conv", "linear", "rnn")
DECAYS = ("constant", "cosine")
GRANULARITIES = ("element", "block")


@dataclass
class SparsityConfig:
    """Every knob of sparse-to-sparse training.

    ``density`` is the kept fraction over all sparsified weights, the name the whole library uses
    (``ebsparse.nn``, ``sparsify``). The paper's tables state the sparsity S = 1 - density instead,
    so a setting may be given as ``sparsity`` (``sparsity: 0.9`` in YAML, ``SparsityConfig(sparsity=0.9)``)
    — one of the two, not both; the default is density 0.5. The summary table reports S, as the paper.
    ``distribution``: "erk" (ER for 2-D weights, ERK for convolutions, as the paper does), "er"
    (only the two channel dims, kernels ignored) or "uniform". ``update_every`` is ΔT_e and
    ``prune_fraction`` is p: 1100 / 0.05 are the paper's Latent-Diffusion exploration frequency and
    its recommended pruning rate (ChiroDiff used ΔT_e = 800). ``prune_fraction_decay="cosine"``
    decays p to 0 between ``begin_step`` and ``end_step`` (RigL); the paper keeps it constant.
    ``layers``: the kinds of weights to sparsify; ``exclude``: globs of parameter names left dense;
    ``custom_sparsity``: glob -> sparsity S for layers that keep their own level (left out of the ERK
    budget; S as in the paper's per-layer settings). ``optimizer_safe`` declares an optimizer other than Adam/AdamW safe to use (its state is
    then not touched on mask updates). ``backend`` goes to the sparse modules (None = auto).
    ``granularity: block`` keeps and drops whole ``block`` = (bo, bi) blocks of the (out, in) channel
    plane (every conv tap alike; ``ebsparse.formats.block``) in the conv and linear layers the block
    divides: ER/ERK densities become exact block counts, drop by block L2 norm, grow by the block's
    summed |dense gradient| (RigL) or at random (MagRan); other weights stay element-wise.
    """

    method: str = "static"
    density: float | None = None
    distribution: str = "erk"
    erk_power_scale: float = 1.0
    update_every: int = 1100
    prune_fraction: float = 0.05
    prune_fraction_decay: str = "constant"
    begin_step: int = 0
    end_step: int | None = None
    layers: tuple[str, ...] = LAYER_KINDS
    exclude: tuple[str, ...] = ()
    custom_sparsity: dict[str, float] = field(default_factory=dict)
    skip_optimizer_step: bool = True
    optimizer_safe: bool = False
    backend: str | None = None
    seed: int = 0
    granularity: str = "element"
    block: tuple[int, int] = (16, 16)
    sparsity: dataclasses.InitVar[float | None] = None

    def __post_init__(self, sparsity: float | None) -> None:
        if sparsity is not None:
            if self.density is not None:
                raise ValueError(f"sparsity: give density={self.density!r} or sparsity={sparsity!r} "
                                 "(the paper's S = 1 - density), not both")
            if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
                raise ValueError(f"sparsity.sparsity: expected a number in [0, 1) (the fraction of zeros), "
                                 f"got {sparsity!r}")
            self.density = round(1.0 - float(sparsity), 12)  # 1 - 0.9 is 0.09999999999999998 in binary
        elif self.density is None:
            self.density = 0.5
        self.layers = tuple(self.layers)
        self.exclude = tuple(self.exclude)
        self.custom_sparsity = dict(self.custom_sparsity)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"sparsity.{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.method not in METHODS:
            raise bad("method", f"one of {METHODS}")
        if not isinstance(self.density, (int, float)) or isinstance(self.density, bool) \
                or not 0.0 < self.density <= 1.0:
            raise bad("density", "a number in (0, 1] (the kept fraction)")
        self.density = float(self.density)
        if self.distribution not in DISTRIBUTIONS:
            raise bad("distribution", f"one of {DISTRIBUTIONS}")
        if not isinstance(self.erk_power_scale, (int, float)) or self.erk_power_scale < 0:
            raise bad("erk_power_scale", "a number >= 0")
        if not isinstance(self.update_every, int) or isinstance(self.update_every, bool) or self.update_every < 1:
            raise bad("update_every", "an integer >= 1")
        if not isinstance(self.prune_fraction, (int, float)) or not 0.0 < self.prune_fraction < 1.0:
            raise bad("prune_fraction", "a number in (0, 1)")
        if self.prune_fraction_decay not in DECAYS:
            raise bad("prune_fraction_decay", f"one of {DECAYS}")
        if not isinstance(self.begin_step, int) or self.begin_step < 0:
            raise bad("begin_step", "an integer >= 0")
        if self.end_step is not None and (not isinstance(self.end_step, int) or self.end_step <= self.begin_step):
            raise bad("end_step", f"None or an integer > begin_step={self.begin_step}")
        unknown = [k for k in self.layers if k not in LAYER_KINDS]
        if not self.layers or unknown:
            raise bad("layers", f"a non-empty subset of {LAYER_KINDS}")
        for pattern, s in self.custom_sparsity.items():
            if not isinstance(pattern, str) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise ValueError(
                    f"sparsity.custom_sparsity: expected glob -> sparsity in [0, 1), got {pattern!r}: {s!r}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise bad("backend", "None or a backend name")
        if not isinstance(self.seed, int):
            raise bad("seed", "an integer")
        if self.granularity not in GRANULARITIES:
            raise bad("granularity", f"one of {GRANULARITIES}")
        self.block = tuple(self.block) if isinstance(self.block, (list, tuple)) else self.block
        if self.block not in SUPPORTED_BLOCKS:
            raise bad("block", f"one of {[list(b) for b in SUPPORTED_BLOCKS]} (bo, bi)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SparsityConfig":
        """Parse the YAML ``sparsity:`` section (a mapping; ``density`` or the paper's ``sparsity``);
        rejects unknown keys and wrong types."""
        if isinstance(d, Mapping):
            d = dict(d)
            for key in ("layers", "exclude"):
                if isinstance(d.get(key), str):
                    d[key] = (d[key],)
            # A block other than the default without granularity: block would be ignored. (The default
            # itself is in every to_dict(), which must read back.)
            if (d.get("granularity", "element") != "block" and isinstance(d.get("block"), (list, tuple))
                    and tuple(d["block"]) != tuple(cls.block)):
                raise ValueError(f"sparsity.block: {d['block']!r} is set but sparsity.granularity is "
                                 f"{d.get('granularity', 'element')!r}; add granularity: block")
        return config_from_dict(cls, d, "sparsity")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"], out["exclude"] = list(self.layers), list(self.exclude)
        out["block"] = list(self.block)
        return out

    @property
    def target_sparsity(self) -> float:
        """The paper's S = 1 - density."""
        return round(1.0 - self.density, 12)

    def replace(self, **changes: Any) -> "SparsityConfig":
        return dataclasses.replace(self, **changes)
