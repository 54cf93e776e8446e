"""The model behind any ``ebsparse train`` / ``eb-train`` checkpoint or ``ebsparse prune`` folder
(front layer: it knows every algorithm whose state changes the model's modules: the
sparse-to-sparse masks and the pruned architecture of a fine-tuned pruned model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion.checkpoint import checkpoint_files, load_checkpoint
from ..diffusion.config import ExperimentConfig
from ..diffusion.plugins import TrainerPlugin
from ..models import build_model
from ..pruning.recipe import RECIPE_FILE, load_pruned, rebuild_pruned

__all__ = ["model_from_checkpoint", "is_pruned_folder", "PrunedModel", "pruned_plugins", "EXPERIMENT_KEY"]

#: Key of a pruned folder's ``recipe.json`` ``extra`` that holds the experiment config it came from.
EXPERIMENT_KEY = "experiment"


def is_pruned_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``ebsparse prune`` (it holds ``recipe.json``)."""
    return Path(path).is_dir() and (Path(path) / RECIPE_FILE).is_file()


def _pruned_experiment(path: Path, recipe: dict[str, Any]) -> ExperimentConfig:
    experiment = recipe.get("extra", {}).get(EXPERIMENT_KEY)
    if experiment is None:
        raise ValueError(f"pruned folder {str(path)!r} does not record the experiment config it was pruned from "
                         "(written by an older 'ebsparse prune'); prune the checkpoint again")
    return ExperimentConfig.from_dict(experiment)


class PrunedModel(TrainerPlugin):
    """Trains a physically pruned model: swaps the config's model for the architecture of ``recipe``
    (with ``model``'s weights when given) and records the recipe in every checkpoint, so that the
    checkpoint can be resumed, sampled and evaluated without the pruned folder."""

    name = "pruned"

    def __init__(self, recipe: dict[str, Any], model: nn.Module | None = None, source: str | None = None):
        self.recipe, self.model, self.source = recipe, model, source

    def prepare_model(self, trainer, model: nn.Module) -> nn.Module:
        return self.model if self.model is not None else rebuild_pruned(self.recipe, build_model)

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"recipe": self.recipe, "source": self.source}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta.get("recipe", {}).get("groups") != self.recipe.get("groups"):
            raise ValueError("cannot resume: the checkpoint was trained from another pruned model")


def _saved_recipe(run_dir: Path) -> dict[str, Any] | None:
    """The pruned recipe a run directory's checkpoints were trained with (from the JSON sidecars),
    or None for a run of the config's own model."""
    for ckpt in checkpoint_files(run_dir / "checkpoint.safetensors"):
        try:
            meta = json.loads(ckpt.with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        return meta.get("plugins", {}).get(PrunedModel.name, {}).get("recipe")
    return None


def pruned_plugins(config: ExperimentConfig, run_dir: str | Path, init_from: str | Path | None,
                   resume: bool) -> list[TrainerPlugin]:
    """The plugins that make ``ebsparse train`` train a pruned model: ``init_from`` (a folder of
    ``ebsparse prune``) starts one; a resumed run that was started so gets its architecture back
    from its checkpoint. Empty for a run of the config's own model."""
    saved = _saved_recipe(Path(run_dir)) if resume else None
    if init_from is None:
        return [PrunedModel(saved)] if saved is not None else []
    init_from = Path(init_from)
    if not is_pruned_folder(init_from):
        raise FileNotFoundError(f"--init-from {str(init_from)!r}: expected a folder written by 'ebsparse prune' "
                                f"(with {RECIPE_FILE})")
    model, recipe = load_pruned(init_from, build_model)
    if recipe["base"] != config.model:
        source = recipe.get("extra", {}).get("config_file", "another config")
        raise ValueError(f"--init-from {str(init_from)!r} was pruned from the model of {source} ({recipe['base']}), "
                         f"not from this config's model ({config.model})")
    if resume:
        if saved is None or saved.get("groups") != recipe.get("groups"):
            raise ValueError(f"--resume: the run in {str(run_dir)!r} was not started from --init-from "
                             f"{str(init_from)!r}; drop --init-from to resume it as it was started")
        return [PrunedModel(saved)]
    return [PrunedModel(recipe, model.train(), source=str(init_from))]


def model_from_checkpoint(path: str | Path, use_ema: bool = True) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with and load its EMA (or, ``use_ema=False``, raw)
    weights; returns ``(model in eval mode, its experiment config, the checkpoint's metadata)``.

    ``path``: a ``checkpoint.safetensors``, the run directory holding it, or a folder written by
    ``ebsparse prune`` (its one set of weights; the metadata then has ``step`` of the checkpoint it
    was pruned from, or None, and ``pruned: True``). A run with a ``sparsity:`` section gets its
    sparse modules and masks back, a fine-tuned pruned model its pruned architecture. No pickle is
    involved. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    when the weights do not fit the model config stored with them.
    """
    if is_pruned_folder(path):
        model, recipe = load_pruned(path, build_model)
        cfg = _pruned_experiment(Path(path), recipe)
        return model.eval(), cfg, {"step": recipe.get("extra", {}).get("step"), "pruned": True,
                                   "source": recipe.get("extra", {}).get("source")}
    tensors, meta = load_checkpoint(path)
    cfg = ExperimentConfig.from_dict(meta["config"])
    recipe = meta.get("plugins", {}).get(PrunedModel.name, {}).get("recipe")
    model = build_model(cfg.model) if recipe is None else rebuild_pruned(recipe, build_model)
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
    return model.eval(), cfg, {**meta, "pruned": recipe is not None}
