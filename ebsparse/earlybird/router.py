"""Combined inference for TA-EB: one module that sends each sample to the model of its timestep region.

``TimestepRouter(x, t)`` has the signature of a single denoiser, so every sampler (and the trainer)
can use it wherever one model goes. Routing:

- **eval mode (sampling)**: t < switch[0] -> model 0, switch[0] <= t < switch[1] -> model 1, ...;
  the switch is the next region's lower bound, as in the reference (overlaps exist only in training).
- **train mode (routed batch)**: like eval mode, except that a t inside the overlap of regions i and
  i + 1 goes to model i when t is odd and to model i + 1 when t is even, so every region model is
  trained over its whole ``[low, high]`` (the overlap at half density each) with a deterministic,
  state-free rule (exact resume needs no extra random state). A t in a gap between regions (the
  reference's CelebA split) trains the model that serves it at sampling time.

Saved as *one* artifact: ``router.json`` (regions plus, per region, the pruning recipe: base model
spec, example-input shapes, pruner config, kept channels) and ``router.safetensors`` (all weights).
Loading rebuilds each region model from its recipe. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..pruning.config import PruningConfig
from ..pruning.masks import ChannelMask
from ..pruning.recipe import atomic_write, input_spec, make_inputs, sha256_file
from ..pruning.shrinking import shrink
from .regions import Region, parse_regions, region_index, switch_points

__all__ = ["ROUTER_FORMAT", "TimestepRouter", "save_router", "load_router"]

ROUTER_FORMAT = "ebsparse-timestep-router-v1"
ROUTER_FILE = "router.json"
WEIGHTS_FILE = "router.safetensors"


class TimestepRouter(nn.Module):
    """``models[i]`` serves ``regions[i]``. ``forward(x (B, ...), t (B,) or scalar) -> (B, ...)``."""

    def __init__(self, models: Sequence[nn.Module], regions: Sequence[Region]):
        super().__init__()
        if len(models) != len(regions) or not models:
            raise ValueError(f"TimestepRouter: expected one model per region, got {len(models)} models "
                             f"and {len(regions)} regions")
        self.models = nn.ModuleList(models)
        self.regions = tuple(parse_regions(list(regions)))
        self.switch = switch_points(self.regions)

    def assign(self, t: torch.Tensor) -> torch.Tensor:
        """Region index of each timestep under the current mode (see the module docstring)."""
        idx = region_index(t, self.regions)
        if self.training:
            for i, (a, b) in enumerate(zip(self.regions, self.regions[1:])):
                shared = (t >= b.low) & (t <= a.high) & (t % 2 == 1)
                idx = torch.where(shared, torch.full_like(idx, i), idx)
        return idx

    @property
    def class_conditional(self) -> bool:
        """Whether the region models take class labels (DiT): then ``forward``/``eps`` take them too."""
        return any(getattr(m, "class_conditional", False) for m in self.models)

    @property
    def num_classes(self) -> int:
        return self.models[0].num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """Each sample to its region's model; ``cond``: per-sample extra inputs (a DiT's labels)."""
        return self._route("__call__", x, t, cond)

    def eps(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """The region models' epsilon heads (class-conditional models with learned sigma)."""
        return self._route("eps", x, t, cond)

    def _route(self, method: str, x: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...]) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"TimestepRouter: t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        idx = self.assign(t)
        used = torch.unique(idx).tolist()
        if len(used) == 1:  # the common case while sampling: one model for the whole batch
            return getattr(self.models[used[0]], method)(x, t, *cond)
        out: torch.Tensor | None = None
        for i in used:
            sel = torch.nonzero(idx == i).flatten()
            y = getattr(self.models[i], method)(x[sel], t[sel], *[c[sel] for c in cond])
            if out is None:
                out = y.new_zeros((x.shape[0], *y.shape[1:]))
            out = out.index_copy(0, sel, y)
        return out

    def extra_repr(self) -> str:
        return "regions=[" + ", ".join(map(str, self.regions)) + f"], switch={self.switch}"


def save_router(directory: str | os.PathLike, router: TimestepRouter, base: Mapping[str, Any],
                example_inputs: Sequence[torch.Tensor], masks: Sequence[ChannelMask | None],
                configs: Sequence[PruningConfig | None], extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``router.json`` + ``router.safetensors`` into ``directory``; returns the JSON path.

    ``masks[i]`` / ``configs[i]``: the ticket region model ``i`` was shrunk with (``None`` for an
    unpruned region model). ``base``: JSON-able spec from which ``build_base`` rebuilds the dense model.
    """
    from safetensors.torch import save_file

    n = len(router.models)
    if len(masks) != n or len(configs) != n:
        raise ValueError(f"save_router: expected {n} masks and configs (one per region), got {len(masks)} and {len(configs)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in router.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": ROUTER_FORMAT}))
    spec = input_spec(example_inputs)
    doc = {
        "format": ROUTER_FORMAT,
        "regions": [r.to_dict() for r in router.regions],
        "models": [{"base": dict(base), "example_inputs": spec,
                    "pruning": None if c is None else c.to_dict(),
                    "groups": None if m is None else m.to_json()} for m, c in zip(masks, configs)],
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(weights)},
        "extra": dict(extra or {}),
    }
    text = json.dumps(doc, indent=1)
    path = directory / ROUTER_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def load_router(directory: str | os.PathLike,
                build_base: Callable[[Mapping[str, Any]], nn.Module]) -> tuple[TimestepRouter, dict[str, Any]]:
    """Rebuild a saved router (eval mode): each region model from its recipe, then all weights strictly.

    Raises ``ValueError`` when the files are not a router artifact or the weights do not match.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / ROUTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no timestep router at {path}")
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("format") != ROUTER_FORMAT:
        raise ValueError(f"{path}: expected format {ROUTER_FORMAT!r}")
    weights = directory / doc["weights"]["file"]
    if sha256_file(weights) != doc["weights"]["sha256"]:
        raise ValueError(f"{weights} is not the weights file {path} was written with (SHA-256 differs)")
    models = []
    for entry in doc["models"]:
        model = build_base(entry["base"])
        if entry["groups"] is not None:
            config = PruningConfig.from_dict(entry["pruning"])
            model = shrink(model, ChannelMask.from_json(entry["groups"]), make_inputs(entry["example_inputs"]),
                           ignored_layers=config.ignored_layers)
        models.append(model)
    router = TimestepRouter(models, [Region(**r) for r in doc["regions"]])
    try:
        router.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"the weights in {weights} do not match the router {path} rebuilds: {e}") from e
    return router.eval(), doc
