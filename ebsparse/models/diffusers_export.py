"""Write a :class:`~.diffusers_models.DiffusersModel` (dense, channel-pruned or sparse) back as a folder
that diffusers' ``from_pretrained`` loads, so a pruned or sparse model goes back into a pipeline.

The folder is ``save_pretrained`` of a fresh diffusers model built from the exported config and
holding our weights: sparse layers as dense weights with their dropped entries zero, a pruned
``UNet2DModel`` with ``block_out_channels`` and ``time_embedding_dim`` read from its layers. Before
anything is written the export checks that the config rebuilds exactly our shapes (every weight,
and every attention's head count and scale) and that the rebuilt model gives our outputs on one
random batch; a pruned architecture that no config describes is an error naming the first weights
that differ (prune with ``widths="diffusers"``, :mod:`ebsparse.pruning.widths`, to stay inside
what a config describes). The folder appears atomically (written next to it, then renamed).
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.sparsify import densify
from .diffusers_models import DiffusersModel

__all__ = ["export_diffusers", "exported_config"]


def exported_config(inner: nn.Module) -> dict[str, Any]:
    """Constructor arguments of ``type(inner)`` that rebuild ``inner``'s architecture (for a pruned
    ``UNet2DModel``: the widths of its levels and of its time embedding read from its layers)."""
    params = inspect.signature(type(inner).__init__).parameters
    config = {k: v for k, v in dict(inner.config).items() if k in params and k != "self"}
    if type(inner).__name__ == "UNet2DModel":
        widths = [int(block.resnets[0].conv2.out_channels) for block in inner.down_blocks]
        config["block_out_channels"] = widths
        time_dim = int(inner.time_embedding.linear_1.out_features)
        if config.get("time_embedding_dim") is not None or time_dim != widths[0] * 4:
            config["time_embedding_dim"] = time_dim
    return config


def _attention_layout(model: nn.Module) -> dict[str, tuple]:
    return {name: (m.heads, float(m.scale)) for name, m in model.named_modules()
            if type(m).__name__ == "Attention" and hasattr(m, "heads") and hasattr(m, "scale")}


def _check_layout(cls_name: str, ours: nn.Module, rebuilt: nn.Module) -> None:
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    diffs = [f"{k}: ours {a.get(k, 'absent')}, config {b.get(k, 'absent')}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    la, lb = _attention_layout(ours), _attention_layout(rebuilt)
    diffs += [f"{k}: ours (heads, scale) {la[k]}, config {lb.get(k)}" for k in sorted(la) if la[k] != lb.get(k)]
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ValueError(f"export_diffusers: this pruned {cls_name} is not described by any {cls_name} config: "
                         f"{len(diffs)} differences from {cls_name}(**exported config): {'; '.join(diffs[:3])}{more}. "
                         "Prune with widths='diffusers' (earlybird.widths: diffusers, ebsparse prune --widths "
                         "diffusers), which keeps a UNet2DModel inside what its config describes")


def export_diffusers(model: nn.Module, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model`` (a model of ``model.type: diffusers``) to ``out`` as a diffusers folder.

    ``UNet2DModel.from_pretrained(out)`` (or the model's class) then gives a model with our shapes
    and outputs. ``UNet2DConditionModel``'s learned label context is not part of the folder (it is
    not a diffusers module): a pipeline passes its own ``encoder_hidden_states``. Raises
    ``ValueError`` when ``model`` is not a diffusers model, when no config describes its (pruned)
    architecture, or when the rebuilt model's outputs differ; ``FileExistsError`` when ``out``
    exists and not ``overwrite``.
    """
    if not isinstance(model, DiffusersModel):
        raise ValueError(f"export_diffusers(model): expected a model of model.type 'diffusers' (DiffusersModel), "
                         f"got {type(model).__name__}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"export_diffusers: {str(out)!r} exists; pass overwrite=True (--force) or choose "
                              "another folder")
    work = copy.deepcopy(model).cpu().float().eval()
    densify(work)  # sparse layers: dense weights, zeros where the mask drops them
    inner = work.inner
    cls = type(inner)
    config = exported_config(inner)
    with torch.device("meta"):
        _check_layout(cls.__name__, inner, cls.from_config(config))
    rebuilt = cls.from_config(config).eval()
    rebuilt.load_state_dict(inner.state_dict(), strict=True)
    _check_outputs(work, rebuilt)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    rebuilt.save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@torch.no_grad()
def _check_outputs(ours: DiffusersModel, rebuilt: nn.Module) -> None:
    """The rebuilt model must compute what ours does (same ops on the same weights: equal bits)."""
    g = torch.Generator().manual_seed(0)
    s, c = ours.image_size, ours.in_channels
    x = torch.randn(1, c, s, s, generator=g)
    t = torch.tensor([500])
    y = torch.zeros(1, dtype=torch.long) if ours.class_conditional else None
    expected = ours(x, t, y)
    name = ours.config.class_name
    if name == "UNet2DConditionModel":
        got = rebuilt(x, t, encoder_hidden_states=ours.context(y, 1, x.device)).sample
    elif name == "DiTTransformer2DModel":
        got = rebuilt(x, timestep=t, class_labels=y).sample
    else:
        got = rebuilt(x, t, class_labels=y).sample
    got = got[:, :c]
    if not torch.equal(got, expected):
        raise ValueError(f"export_diffusers: the rebuilt {name} differs from the model (max abs difference "
                         f"{float((got - expected).abs().max()):.3g}); nothing was written")
