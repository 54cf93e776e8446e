"""Static-DM, RigL-DM and MagRan-DM: one object per method, applied to any model and its optimizer.

Usage with your own loop::

    sp = RigL(sparsity=0.9, distribution="erk", update_every=1100, prune_fraction=0.05)
    model = sp.apply(model, optimizer)        # swaps in sparse modules, rebinds the optimizer
    for batch in data:
        optimizer.zero_grad(); loss(model, batch).backward()
        if sp.step():                          # False on RigL update steps: the step is skipped
            optimizer.step()                   # a post-hook re-zeroes in-place-masked weights

Masks live in the model's ``state_dict`` (``<module>.mask`` / ``<module>.<weight>_mask``); the
schedule position and the sparsifier's generator are in :meth:`Sparsifier.state_dict`.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Any

import torch
from torch import nn

from ebsparse.formats.block import (block_norms, block_sums, block_unsupported_reason, blocks_of, expand_blocks,
                                    kept_blocks, random_block_mask)
from ebsparse.nn.conv import conv_unsupported_reason
from ebsparse.nn.sharded import full, is_sharded, mask_like

from .config import SparsityConfig
from .distribution import layer_densities
from .masks import drop_smallest, grow_largest, kept_count, random_mask
from .optim import check_optimizer, rebind_parameters, reset_moments
from .schedule import UpdateSchedule
from .targets import InPlaceTarget, Target, build_targets, find_candidates, swappable

__all__ = ["Sparsifier", "Static", "RigL", "MagRan", "from_config"]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over ranks so every rank chooses from the same scores."""
    t = t.detach().clone()
    torch.distributed.all_reduce(t)
    return t.div_(torch.distributed.get_world_size())


class Sparsifier:
    """Common part: ER/ERK densities, exact-count random masks, the update schedule and state."""

    method = "static"

    def __init__(self, config: SparsityConfig | None = None, **kwargs: Any):
        if config is not None and kwargs:
            raise ValueError(f"{type(self).__name__}: pass either config or keyword knobs, not both")
        if config is None:
            config = SparsityConfig(method=self.method, **kwargs)
        elif not isinstance(config, SparsityConfig):
            raise TypeError(f"config: expected a SparsityConfig, got {type(config).__name__}")
        if config.method != self.method:
            raise ValueError(f"config.method: {type(self).__name__} expects {self.method!r}, got {config.method!r}")
        self.config = config
        self.schedule = UpdateSchedule(config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.targets: list[Target] = []
        self.densities: dict[str, float] = {}
        self.dense_layers: dict[str, int] = {}  # weights the distribution made dense -> numel
        self.blocks: dict[str, tuple[int, int]] = {}  # weights with block masks -> (bo, bi)
        self.element_wise: dict[str, str] = {}  # with granularity block: weights left element-wise -> why
        self._applied = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0  # optimizer steps taken (or skipped) so far
        self.updates = 0
        self.last_update: dict[str, Any] = {}
        self.regrown = 0  # weights dropped and regrown over the run (blocks count all their weights)
        # Block layers no update can change: floor(prune_fraction * kept blocks) is 0 -> why.
        self.frozen: dict[str, str] = {}
        self._hooks: list[Any] = []

    # --- setup -----------------------------------------------------------------------------
    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """Sparsify ``model`` in place with random exact-count masks; returns it.

        Pass the ``optimizer`` already built on ``model`` (it is pointed at the swapped modules'
        parameters), or call :meth:`attach_optimizer` later. Every rank draws the same masks (the
        generator is seeded by ``config.seed``).
        """
        if self._applied:
            raise RuntimeError(f"{type(self).__name__}.apply: already applied to a model")
        if optimizer is not None:
            check_optimizer(optimizer, self.config.optimizer_safe)
        cfg = self.config
        candidates = find_candidates(model, cfg.layers, cfg.exclude)
        if not candidates:
            raise ValueError(f"model: no weights of the kinds {cfg.layers} to sparsify (exclude={cfg.exclude})")
        custom, used = {}, set()
        for c in candidates:
            for pattern, s in cfg.custom_sparsity.items():
                if fnmatch.fnmatchcase(c.name, pattern) or fnmatch.fnmatchcase(c.module_name, pattern):
                    custom[c.name] = s
                    used.add(pattern)
                    break
        unused = [p for p in cfg.custom_sparsity if p not in used]
        if unused:  # a typo would give the layer it meant the ERK level instead
            raise ValueError(f"sparsity.custom_sparsity: {unused} match no weight to sparsify (of the kinds "
                             f"{list(cfg.layers)}, after exclude)")
        self.densities = layer_densities({c.name: c.shape for c in candidates}, cfg.target_sparsity, cfg.distribution,
                                         cfg.erk_power_scale, custom)
        # A weight the distribution makes dense stays a plain module: nothing to mask or update, and the
        # dense module is the fastest way to run it (the sparse op's dense fallback adds overhead).
        sparse, masks = [], {}
        for c in candidates:
            weight = getattr(model.get_submodule(c.module_name), c.attr)
            block = self._block_for(model, c) if cfg.granularity == "block" else None
            if block is not None:  # exact counts in blocks
                n_blocks = weight.numel() // (block[0] * block[1] * math.prod(c.shape[2:]))
                if kept_blocks(n_blocks, self.densities[c.name]) == n_blocks:
                    self.dense_layers[c.name] = weight.numel()
                    continue
                sparse.append(c)
                self.blocks[c.name] = block
                masks[c.name] = random_block_mask(c.shape, self.densities[c.name], block, generator=self.generator,
                                                  device=weight.device)
                continue
            n_keep = kept_count(weight.numel(), self.densities[c.name])
            if n_keep == weight.numel():
                self.dense_layers[c.name] = n_keep
                continue
            sparse.append(c)
            masks[c.name] = random_mask(c.shape, n_keep, self.generator, weight.device)
        self.targets, rebound = build_targets(model, sparse, masks, cfg.backend, self.blocks)
        self._find_frozen()
        self._applied = True
        if optimizer is not None:
            rebind_parameters(optimizer, rebound)
            self.attach_optimizer(optimizer)
        self._set_dense_grad()
        return model

    def _block_for(self, model: nn.Module, c) -> tuple[int, int] | None:
        """The block shape of a candidate under granularity "block", or None (left element-wise,
        with the reason recorded in `element_wise`)."""
        block = tuple(self.config.block)
        if c.kind not in ("conv", "linear") or not swappable(model, c):
            self.element_wise[c.name] = "element-wise (no block kernel runs it)"
            return None
        # The conv's own reason first: a grouped conv's weight is (out, in / groups, ...), and the
        # channel counts the block check would name are not the layer's.
        reason = conv_unsupported_reason(model.get_submodule(c.module_name)) if c.kind == "conv" else None
        reason = reason or block_unsupported_reason(c.shape, block)
        if reason:
            self.element_wise[c.name] = reason
            return None
        return block

    def _find_frozen(self) -> None:
        """Name (in `frozen`, and in a warning) the block layers whose masks no update can change.

        An update moves floor(prune_fraction * kept units) per layer, as the RigL code base does.
        Counted in blocks, a layer keeping fewer than 1 / prune_fraction blocks never moves one (at
        0.05: under 20). Moving one anyway (carrying the fractions until one is due) swaps a large
        share of such a layer for zeros at once: on the digits model at 0.75 with 16x16 blocks, where
        layers keep 1-16 blocks, the last update swapped one-block layers' only block and every
        sample collapsed to the same grey image. So these layers keep their masks, as the RigL rule
        says, and the run names them instead of silently reporting updates that changed nothing."""
        p = self.config.prune_fraction
        if self.method == "static" or not self.blocks:
            return
        for t in self.targets:
            block = self.blocks.get(t.name)
            if block is not None:
                kept = int(blocks_of(t.mask, block).sum())
                if int(p * kept) == 0:
                    self.frozen[t.name] = f"keeps {kept} blocks of {block[0]}x{block[1]} < 1 / prune_fraction"
        if self.frozen:
            warnings.warn(f"{type(self).__name__}: {len(self.frozen)} of {len(self.blocks)} block layers keep fewer "
                          f"than 1 / prune_fraction = {1 / p:.3g} blocks, so no update can move one of theirs: "
                          f"they train with their initial masks (`Sparsifier.frozen` names them). Smaller blocks "
                          f"or a larger prune_fraction let them change.", UserWarning, stacklevel=3)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Use ``optimizer`` (built on the sparsified model): checked, and hooked to re-zero the
        in-place-masked weights after each of its steps."""
        check_optimizer(optimizer, self.config.optimizer_safe)
        for h in self._hooks:
            h.remove()
        self.optimizer = optimizer
        self._hooks = [optimizer.register_step_post_hook(lambda *_: self.reapply())]
        for t in self.targets:
            reset_moments(optimizer, t.weight, t.mask)

    def reapply(self) -> None:
        """Zero every weight outside its mask (in-place-masked weights can drift under weight decay)."""
        for t in self.targets:
            if isinstance(t, InPlaceTarget):
                t.reapply()

    # --- training ----------------------------------------------------------------------------
    def step(self) -> bool:
        """Call after ``backward()``; updates masks when the schedule says so. Returns whether the
        optimizer should step (False on update steps of a method with ``skip_optimizer_step``)."""
        if not self._applied:
            raise RuntimeError(f"{type(self).__name__}.step: call apply(model, optimizer) first")
        self.steps += 1
        t = self.steps
        updated = self.method != "static" and self.schedule.is_update(t)
        for target in self.targets:
            target.mask_sharded_grad()
        if updated:
            self._update(self.schedule.prune_fraction(t))
        self._set_dense_grad()
        return not (updated and self.config.skip_optimizer_step)

    def _set_dense_grad(self) -> None:
        """Set the dense-gradient flag for the coming backward (the (steps + 1)-th)."""
        dense = self.method == "rigl" and self.schedule.is_update(self.steps + 1)
        for t in self.targets:
            t.set_dense_grad(dense)

    def _grow_scores(self, target: Target) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _grow_block_scores(self, target: Target, block: tuple[int, int]) -> torch.Tensor:
        """Grow scores per block (out / bo, in / bi); by default the block sums of |element scores|."""
        return block_sums(self._grow_scores(target).abs(), block)

    @torch.no_grad()
    def _update(self, fraction: float) -> None:
        """Drop the ``fraction`` of active weights with the smallest |W| and grow as many by the
        method's score; per layer, so every layer keeps its exact count."""
        distributed = _distributed()
        dropped = 0
        for target in self.targets:
            mask, weight = target.mask, target.weight
            block = self.blocks.get(target.name)
            # With a block pattern the units are blocks: drop by block L2 norm, grow by block score.
            units = blocks_of(mask, block) if block else mask
            n_active = int(units.sum())
            k = int(fraction * n_active)
            if k == 0 or n_active == units.numel():
                continue
            # A sharded weight (FSDP2) is scored whole: gathered, its weights and its gradient (already
            # averaged over ranks by the reduce-scatter) are the same numbers on every rank.
            whole = full(weight)
            drop_scores = block_norms(whole, block) if block else whole.abs()
            grow_scores = self._grow_block_scores(target, block) if block else self._grow_scores(target)
            if distributed and not is_sharded(weight):  # a rank's local gradient differs from its neighbours'
                drop_scores = _all_reduce_mean(drop_scores)
                grow_scores = _all_reduce_mean(grow_scores)
            grow_scores = grow_scores.abs()
            kept = drop_smallest(units, drop_scores, k)
            grow = grow_largest(kept, grow_scores, k)
            new_mask = kept | grow
            if block:
                kept, new_mask = (expand_blocks(m, mask.shape, block).to(mask.device) for m in (kept, new_mask))
            weight.mul_(mask_like(kept, weight))  # grown weights start at exactly zero
            target.set_mask(new_mask)
            if weight.grad is not None:
                weight.grad.mul_(mask_like(new_mask, weight.grad))  # the dense gradient must not leak into a taken step
            if self.optimizer is not None:
                reset_moments(self.optimizer, weight, kept)
            dropped += k
            self.regrown += k * (mask.numel() // units.numel())
        self.updates += 1
        self.last_update = {"step": self.steps, "prune_fraction": fraction, "regrown": dropped}

    # --- reporting and state -----------------------------------------------------------------
    @property
    def kept(self) -> int:
        """Kept weights over all sparsified layers, the ones the distribution made dense included."""
        return sum(int(t.mask.sum()) for t in self.targets) + sum(self.dense_layers.values())

    @property
    def total(self) -> int:
        return sum(t.mask.numel() for t in self.targets) + sum(self.dense_layers.values())

    def masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> its current bool mask (layers made dense have none)."""
        return {t.name: t.mask for t in self.targets}

    @torch.no_grad()
    def mask_state(self, state: dict[str, torch.Tensor]) -> None:
        """Zero, in place, the sparsified weights of a state dict (e.g. EMA weights) outside the masks."""
        for t in self.targets:
            if t.name in state:
                state[t.name].mul_(mask_like(t.mask.to(state[t.name].device), state[t.name]))

    def state_dict(self) -> dict[str, Any]:
        """Schedule position and generator; the masks themselves are in the model's state dict."""
        return {"steps": self.steps, "updates": self.updates, "generator": self.generator.get_state(),
                "config": self.config.to_dict(), "regrown": self.regrown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, now = state.get("config"), self.config.to_dict()
        if saved is not None and saved != now:
            changed = ", ".join(f"sparsity.{k} {saved.get(k)!r} -> {now.get(k)!r}"
                                for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
            raise ValueError(f"cannot resume with a changed sparsity section ({changed}): the checkpoint's masks "
                             "and schedule belong to the saved one; start a new run for the new setting")
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.generator.set_state(state["generator"])
        self.regrown = int(state.get("regrown", 0))
        self._set_dense_grad()


class Static(Sparsifier):
    """Static-DM: random ER/ERK masks at initialisation, fixed for the whole run."""

    method = "static"


class RigL(Sparsifier):
    """RigL-DM: drop by magnitude, grow where the dense gradient is largest (computed on update
    steps only)."""

    method = "rigl"

    def _grow_scores(self, target: Target) -> torch.Tensor:
        grad = target.weight.grad
        if grad is None:
            raise RuntimeError(f"RigL: {target.name} has no gradient on an update step; call step() after backward()")
        return full(grad)


class MagRan(Sparsifier):
    """MagRan-DM (SET-style): drop by magnitude, grow at random. The generator is seeded alike on
    every rank, so random growth needs no communication."""

    method = "magran"

    def _grow_scores(self, target: Target) -> torch.Tensor:
        return torch.rand(target.mask.shape, generator=self.generator).to(target.mask.device)

    def _grow_block_scores(self, target: Target, block: tuple[int, int]) -> torch.Tensor:
        shape = target.mask.shape
        return torch.rand(shape[0] // block[0], shape[1] // block[1], generator=self.generator).to(target.mask.device)


_CLASSES = {"static": Static, "rigl": RigL, "magran": MagRan}


def from_config(config: SparsityConfig) -> Sparsifier:
    """The sparsifier object for ``config.method``."""
    return _CLASSES[config.method](config)
