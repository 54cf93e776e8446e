"""Sparse-to-sparse training (Static-DM, RigL-DM, MagRan-DM): ER/ERK layer densities, exact-count
masks, drop/grow updates, their schedule, optimizer-state resets and FLOPs accounting.

The core never imports :mod:`ebsparse.diffusion`; :mod:`ebsparse.s2s.trainer_plugin` adapts it to
the one training loop through its plugin hooks. The driver behind ``ebsparse train`` with a
``sparsity:`` section is :mod:`ebsparse.drivers.sparse_train` (front layer).
"""

from .config import DISTRIBUTIONS, LAYER_KINDS, METHODS, SparsityConfig
from .distribution import layer_densities, raw_density
from .flops import FlopsReport, densities_of, flops_report, train_flops_per_step
from .masks import drop_smallest, grow_largest, kept_count, random_mask
from .schedule import UpdateSchedule
from .sparsifier import MagRan, RigL, Sparsifier, Static, from_config

__all__ = [
    "SparsityConfig", "METHODS", "DISTRIBUTIONS", "LAYER_KINDS",
    "layer_densities", "raw_density",
    "kept_count", "random_mask", "drop_smallest", "grow_largest",
    "UpdateSchedule",
    "Sparsifier", "Static", "RigL", "MagRan", "from_config",
    "FlopsReport", "flops_report", "train_flops_per_step", "densities_of",
]
