"""Structural (channel) pruning: dependency groups, importance, masks as data, physical shrink,
pickle-free save/load.

Everything is imported lazily so that ``import ebsparse.pruning`` (and the ``ebsparse`` command's
``--help``) stays instant; torch-pruning is loaded only when a graph is traced.

Typical use::

    from ebsparse.pruning import PruningConfig, prune, save_pruned
    result = prune(model, (x, t), PruningConfig(pruning_ratio=0.5))
    save_pruned("runs/pruned", result.model, result.mask, base=model_spec, example_inputs=(x, t),
                config=result.config)
"""

from __future__ import annotations

from ebsparse._lazy import lazy_getattr

_EXPORTS = {
    "PruningError": "errors",
    "PruningConfig": "config",
    "Member": "graph", "ChannelGroup": "graph", "DependencyGroups": "graph", "build_groups": "graph",
    "ChannelMask": "masks", "hamming_distance": "masks", "kept_count": "masks", "select_channels": "masks",
    "magnitude_importance": "importance", "taylor_importance": "importance", "uniform_importance": "importance",
    "taylor_loss": "importance", "compute_importance": "importance",
    "check_mask": "shrinking", "shrink": "shrinking", "masked_dense": "shrinking",
    "Plan": "pipeline", "PruneResult": "pipeline", "plan": "pipeline", "prune": "pipeline",
    "save_pruned": "recipe", "load_pruned": "recipe", "load_recipe": "recipe", "input_spec": "recipe",
    "make_inputs": "recipe", "ExampleInputs": "inputs", "check_inputs": "inputs", "call_with": "inputs",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
