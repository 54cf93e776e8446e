"""Save and load pruned models without pickle: a JSON recipe plus safetensors weights.

The reference code bases ``torch.save`` whole pruned modules, and loading those runs arbitrary code.
Here a pruned model is a *recipe* — the base model's spec, the example-input shapes used to trace
it, the pruner config, and the kept channels of every dependency group — plus its weights. Loading
rebuilds the base model from its spec, replays the recipe (trace, shrink), and loads the weights
strictly. JSON and safetensors only: nothing on disk can execute code.

Both files are written to a temporary name and moved in place with ``os.replace``; the recipe is
written last and records the weights' SHA-256, so a reader never pairs a recipe with foreign weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PruningConfig
from .errors import PruningError
from .inputs import ExampleInputs, check_inputs
from .masks import ChannelMask
from .shrinking import shrink

__all__ = [
    "RECIPE_FILE",
    "RECIPE_FORMAT",
    "WEIGHTS_FILE",
    "atomic_write",
    "input_spec",
    "load_pruned",
    "load_recipe",
    "make_inputs",
    "rebuild_pruned",
    "save_pruned",
    "sha256_file",
]

RECIPE_FORMAT = "ebsparse-pruning-recipe-v1"
RECIPE_FILE = "recipe.json"
WEIGHTS_FILE = "model.safetensors"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64, "int64": torch.int64, "int32": torch.int32}


def _tensor_spec(x: Any, where: str) -> dict[str, Any]:
    if not isinstance(x, torch.Tensor):
        raise PruningError(f"{where} must be a tensor, got {type(x).__name__}")
    name = str(x.dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise PruningError(f"{where} has dtype {x.dtype}; expected one of {sorted(_DTYPES)}")
    return {"shape": list(x.shape), "dtype": name}


def input_spec(example_inputs: ExampleInputs) -> list[dict[str, Any]] | dict[str, dict[str, Any]]:
    """Shapes and dtypes of the example inputs (the recipe stores these, not tensors): a list for
    positional inputs, a mapping of argument names for keyword inputs."""
    inputs = check_inputs(example_inputs)
    if isinstance(inputs, dict):
        return {k: _tensor_spec(x, f"example_inputs[{k!r}]") for k, x in inputs.items()}
    return [_tensor_spec(x, f"example_inputs[{i}]") for i, x in enumerate(inputs)]


def _make_tensor(s: Mapping[str, Any], device: str | torch.device, gen: torch.Generator) -> torch.Tensor:
    dtype = _DTYPES[s["dtype"]]
    shape = tuple(int(d) for d in s["shape"])
    if torch.device(device).type == "meta":
        return torch.zeros(shape, dtype=dtype, device="meta")
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)


def make_inputs(spec: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
    """Deterministic inputs of the recorded shapes: N(0, 1) floats (seed 0), zero integers; a dict
    when the spec records keyword inputs."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(spec, Mapping):
        return {k: _make_tensor(s, device, gen) for k, s in spec.items()}
    return tuple(_make_tensor(s, device, gen) for s in spec)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Public names for other artifacts built on recipes (the Early-Bird timestep router).
atomic_write = _atomic_write
sha256_file = _sha256


def save_pruned(directory: str | os.PathLike, model: nn.Module, mask: ChannelMask, base: Mapping[str, Any],
                example_inputs: ExampleInputs, config: PruningConfig,
                extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``recipe.json`` and ``model.safetensors`` into ``directory``; returns the recipe path.

    ``base``: JSON-able spec the caller's ``build_base`` turns back into the dense model (e.g. the
    ``model`` section of an experiment config). ``extra``: JSON-able notes (source checkpoint, counts).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        json.dumps(dict(base))
        json.dumps(dict(extra or {}))
    except TypeError as e:
        raise PruningError(f"save_pruned: base and extra must be JSON-serialisable: {e}") from e
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    _atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": RECIPE_FORMAT}))
    recipe = {
        "format": RECIPE_FORMAT,
        "base": dict(base),
        "example_inputs": input_spec(example_inputs),
        "pruning": config.to_dict(),
        "groups": mask.to_json(),
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(weights)},
        "extra": dict(extra or {}),
    }
    path = directory / RECIPE_FILE
    text = json.dumps(recipe, indent=1)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def load_recipe(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``recipe.json`` (format, required keys). No weights are read."""
    path = Path(directory) / RECIPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pruning recipe at {path}")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PruningError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise PruningError(f"{path}: expected format {RECIPE_FORMAT!r}, got {recipe.get('format') if isinstance(recipe, dict) else recipe!r}")
    missing = [k for k in ("base", "example_inputs", "pruning", "groups", "weights") if k not in recipe]
    if missing:
        raise PruningError(f"{path}: missing keys {missing}")
    return recipe


def rebuild_pruned(recipe: Mapping[str, Any], build_base: Callable[[Mapping[str, Any]], nn.Module],
                   device: str | torch.device = "cpu") -> nn.Module:
    """The pruned architecture ``recipe`` describes, holding the base model's initial weights
    (shrunk); no weights file is read. A checkpoint of a fine-tuned pruned model is loaded into it."""
    config = PruningConfig.from_dict(recipe["pruning"])
    mask = ChannelMask.from_json(recipe["groups"])
    with torch.device(device):
        base = build_base(recipe["base"])
    return shrink(base, mask, make_inputs(recipe["example_inputs"], device), ignored_layers=config.ignored_layers)


def load_pruned(directory: str | os.PathLike, build_base: Callable[[Mapping[str, Any]], nn.Module],
                meta_init: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a pruned model: ``build_base(recipe["base"])`` → replay the recipe → load weights.

    With ``meta_init`` the base is built on the meta device (no init cost, no real forward to trace)
    and the weights are assigned; models whose non-persistent buffers would stay on meta are rebuilt
    on the CPU instead. Raises :class:`PruningError` when the recipe does not match the base model
    or the weights do not match the recipe. Returns ``(model, recipe)``; the model is in eval mode.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    recipe = load_recipe(directory)
    weights = directory / recipe["weights"]["file"]
    if not weights.is_file():
        raise FileNotFoundError(f"pruning recipe names weights {weights}, which do not exist")
    if _sha256(weights) != recipe["weights"].get("sha256"):
        raise PruningError(f"{weights} is not the weights file the recipe was written with (SHA-256 differs)")
    state = load_file(str(weights))
    for device in (("meta", "cpu") if meta_init else ("cpu",)):
        model = rebuild_pruned(recipe, build_base, device)
        try:
            model.load_state_dict(state, strict=True, assign=device == "meta")
        except RuntimeError as e:
            raise PruningError(f"the weights in {weights} do not match the model the recipe rebuilds: {e}") from e
        if not any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
            return model.eval(), recipe
    raise PruningError("load_pruned: the rebuilt model still has meta tensors")  # pragma: no cover
