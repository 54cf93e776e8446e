"""Layer densities for a global sparsity: uniform, ER (Mocanu et al.) and ERK (Evci et al.).

ERK gives a layer a density proportional to ``(Σ dims / Π dims) ** erk_power_scale``, so small
layers stay denser than large ones. The scale ε is chosen so that the layers together keep exactly
the budget of a uniform ``sparsity``; a layer whose density would exceed 1 is made dense and ε is
recomputed without it (the RigL code base's loop, see ``shared/papers/reference-notes.md``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["raw_density", "layer_densities"]


def raw_density(shape: Sequence[int], distribution: str, erk_power_scale: float = 1.0) -> float:
    """Unnormalised density of a weight of ``shape`` (out, in, *kernel)."""
    if len(shape) < 2:
        raise ValueError(f"shape: expected a weight with at least 2 dims (out, in, ...), got {tuple(shape)}")
    if distribution == "uniform":
        return 1.0
    if distribution == "er":  # only the two channel dims: kernels do not count
        n_out, n_in = shape[0], shape[1]
        raw = (n_in + n_out) / (n_in * n_out)
    elif distribution == "erk":  # for a 2-D weight this is exactly ER
        raw = sum(shape) / math.prod(shape)
    else:
        raise ValueError(f"distribution: expected 'erk', 'er' or 'uniform', got {distribution!r}")
    return raw ** erk_power_scale


def layer_densities(shapes: Mapping[str, Sequence[int]], sparsity: float, distribution: str = "erk",
                    erk_power_scale: float = 1.0, custom_sparsity: Mapping[str, float] | None = None
                    ) -> dict[str, float]:
    """Density (kept fraction) of every layer so that all layers together meet ``sparsity``.

    Args:
        shapes: layer name -> weight shape.
        sparsity: global fraction of zeros over the layers not in ``custom_sparsity``, in [0, 1).
        distribution: "erk", "er" or "uniform".
        erk_power_scale: exponent on the raw ER/ERK density (1 = the papers; 0 = uniform).
        custom_sparsity: layer name -> its own sparsity; such layers are left out of the budget.
    Returns:
        layer name -> density in (0, 1]; layers forced dense by the redistribution get exactly 1.0.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: expected a number in [0, 1), got {sparsity!r}")
    custom = dict(custom_sparsity or {})
    unknown = sorted(set(custom) - set(shapes))
    if unknown:
        raise ValueError(f"custom_sparsity: names {unknown} are not among the layers")
    out = {name: 1.0 - float(s) for name, s in custom.items()}
    free = [name for name in shapes if name not in custom]
    if distribution == "uniform":
        out.update({name: 1.0 - sparsity for name in free})
        return {name: out[name] for name in shapes}
    numel = {name: math.prod(shapes[name]) for name in free}
    raw = {name: raw_density(shapes[name], distribution, erk_power_scale) for name in free}
    dense: set[str] = set()
    eps = 0.0
    while True:
        rhs, divisor = 0.0, 0.0
        for name in free:
            n_zeros = math.floor(sparsity * numel[name])
            if name in dense:
                rhs -= n_zeros
            else:
                rhs += numel[name] - n_zeros
                divisor += raw[name] * numel[name]
        if divisor == 0:  # every layer ended up dense
            break
        eps = rhs / divisor
        max_raw = max(raw[name] for name in free if name not in dense)
        if eps * max_raw > 1.0:
            dense.update(name for name in free if name not in dense and raw[name] == max_raw)
            continue
        break
    for name in free:
        out[name] = 1.0 if name in dense else eps * raw[name]
    return {name: out[name] for name in shapes}
