"""The model behind any ``ebsparse train`` / ``eb-train`` checkpoint (front layer: it knows every
algorithm whose state changes the model's modules, today the sparse-to-sparse masks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..diffusion.checkpoint import load_checkpoint
from ..diffusion.config import ExperimentConfig
from ..models import build_model

__all__ = ["model_from_checkpoint"]


def model_from_checkpoint(path: str | Path, use_ema: bool = True) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with and load its EMA (or, ``use_ema=False``, raw)
    weights; returns ``(model in eval mode, its experiment config, the checkpoint's metadata)``.

    ``path``: a ``checkpoint.safetensors`` or the run directory holding it. A run with a
    ``sparsity:`` section gets its sparse modules and masks back. No pickle is involved. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file when the weights do
    not fit the model config stored with them.
    """
    tensors, meta = load_checkpoint(path)
    cfg = ExperimentConfig.from_dict(meta["config"])
    model = build_model(cfg.model)
    if "sparsity" in cfg.algorithms:
        from ..s2s.config import SparsityConfig
        from ..s2s.sparsifier import from_config

        from_config(SparsityConfig.from_dict(cfg.algorithms["sparsity"])).apply(model)
    prefix = "ema/" if use_ema else "model/"
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(path)!r}: its {prefix[:-1]} weights do not fit the model config "
                         f"stored with them: {e}") from e
    return model.eval(), cfg, meta
