"""Early-Bird (EB) and timestep-aware Early-Bird (TA-EB) tickets for diffusion models.

Algorithm core (no dependency on :mod:`ebsparse.diffusion`): :mod:`.config` (the ``earlybird:``
section), :mod:`.tickets` (mask FIFO, distances, ticket test), :mod:`.heatmap` (Figure 2 as PNG),
:mod:`.regions` (timestep regions, the sampling switch, weighted ratio), :mod:`.router`
(:class:`TimestepRouter` and its one-artifact save/load).

Front layer (wires the core to the trainer and the command line): :mod:`.plugin`, :mod:`.pipeline`
(EB-Diff-Train stages and baselines), :mod:`.distributed` (region-parallel processes),
:mod:`.report`, :mod:`.command` (``ebsparse eb-train``, ``ebsparse demo``).
"""

from __future__ import annotations

from ebsparse._lazy import lazy_getattr

_EXPORTS = {
    "EarlyBirdConfig": "config", "BASELINES": "config",
    "TicketTracker": "tickets", "distance_matrix": "tickets",
    "save_distance_heatmap": "heatmap",
    "Region": "regions", "PRESETS": "regions", "parse_regions": "regions", "region_index": "regions",
    "switch_points": "regions", "weighted_ratio": "regions", "sampling_shares": "regions",
    "TimestepRouter": "router", "save_router": "router", "load_router": "router",
    "EBRun": "pipeline",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
