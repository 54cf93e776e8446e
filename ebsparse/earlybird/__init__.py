"""Early-Bird (EB) and timestep-aware Early-Bird (TA-EB) tickets for diffusion models.

Algorithm core (no dependency on :mod:`ebsparse.diffusion`): :mod:`.config` (the ``earlybird:``
section), :mod:`.tickets` (mask FIFO, distances, ticket test), :mod:`.heatmap` (Figure 2 as PNG),
:mod:`.regions` (timestep regions, the sampling switch, weighted ratio), :mod:`.router`
(:class:`TimestepRouter` and its one-artifact save/load), :mod:`.accounting` (the papers'
iterations, region-parallel time and speed-up; the short-EMA warning).

:mod:`.plugin` rides the core on the one training loop through its plugin hooks (ticket tracking,
stage clock, gradient all-reduce). The EB-Diff-Train driver (stages, baselines, region-parallel
processes, report) is :mod:`ebsparse.drivers.eb_pipeline` in the front layer, and the commands
``ebsparse eb-train`` / ``ebsparse demo`` are in :mod:`ebsparse.commands`.
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
    "region_row": "accounting", "region_parallel_totals": "accounting", "speedup": "accounting",
    "warn_short_ema": "accounting",
    "TicketPlugin": "plugin", "TicketSpec": "plugin", "StageClock": "plugin", "GradAllReduce": "plugin",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
