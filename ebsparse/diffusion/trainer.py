"""The training loop behind ``ebsparse train``: epsilon loss, Adam/AdamW, warm-up, clipping, EMA,
metrics (JSONL + CSV), PNG sample grids and exactly resumable checkpoints.

Exact resume: every random draw of a step comes from state that the checkpoint holds (a dedicated
generator for timesteps, noise and flips; the global torch generator for dropout), and the data order
of step ``s`` is a function of (seed, s) only. A run killed after a checkpoint and resumed with
``resume=True`` therefore ends with the same bits as an uninterrupted run — as long as the config
is the one the run started with: a resume compares the two and refuses a change that would alter
what is trained (:func:`resume_breaking_changes`) unless told to go on, and then records it in
``config_changes.jsonl``.
"""

from __future__ import annotations

import contextlib

import copy
import csv
import functools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .. import backends
from ..backends.report import native_cpu_capability
from ..models import build_model
from ..nn.sharded import full
from .checkpoint import (checkpoint_files, flatten_optimizer_state, load_checkpoint, load_latest_good, save_checkpoint,
                         unflatten_optimizer_state)
from .config import ExperimentConfig, changes_text, config_diff
from .distributed import ShardedTraining
from .ema import EMA
from .host_memory import keep_freed_memory
from .images import save_grid
from .losses import epsilon_loss, sample_timesteps
from .plugins import TrainerPlugin
from .samplers import SAMPLERS
from .schedule import NoiseSchedule
from .spaces import sample_space, training_data

__all__ = ["Trainer", "train", "BatchOrder", "sample_images", "CHECKPOINT_NAME", "CONFIG_CHANGES_NAME",
           "resume_breaking_changes"]

CHECKPOINT_NAME = "checkpoint.safetensors"
CONFIG_CHANGES_NAME = "config_changes.jsonl"

#: Keys a resumed run may change without changing what it trains: when it logs, samples,
#: checkpoints and stops, and how grids are drawn.
_RESUME_SAFE = ("training.steps", "training.log_every", "training.sample_every", "training.ckpt_every",
                "training.keep_last", "sampling.")


def numerics_setting(device: torch.device) -> dict[str, Any]:
    """What besides the state and the config decides a training step's bits: torch, the device, the
    intra-op threads (the kernels split their sums by thread count) and, on the CPU, the instruction
    set of torch's kernels and of ebsparse's native ones."""
    setting: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cpu":
        setting["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        setting["native_cpu_capability"] = native_cpu_capability()
    return setting


def resume_breaking_changes(saved: dict[str, Any], current: ExperimentConfig) -> dict[str, tuple[Any, Any]]:
    """The changes from the config a checkpoint was trained with (``saved``, its ``to_dict()`` form)
    to ``current`` that make a resumed run differ from an uninterrupted one, as ``{key: (old, new)}``.

    ``training.steps`` is safe except where a ``sparsity:`` section decays its prune fraction over
    the run (``prune_fraction_decay: cosine`` with no ``end_step`` of its own)."""
    changes = config_diff(saved, current.to_dict())
    sparsity = current.algorithms.get("sparsity") or {}
    steps_set_schedule = sparsity.get("prune_fraction_decay") == "cosine" and sparsity.get("end_step") is None

    def safe(key: str) -> bool:
        if key == "training.steps" and steps_set_schedule:
            return False
        if key == "training.precision" and changes[key] == (None, "fp32"):
            return True  # a checkpoint from before the setting trained in fp32
        if key == "training.distributed" and changes[key] == (None, "none"):
            return True  # a checkpoint from before the setting trained in one process
        return key.startswith(_RESUME_SAFE[-1]) or key in _RESUME_SAFE[:-1]

    return {k: v for k, v in changes.items() if not safe(k)}


class MixedPrecision:
    """``training.precision`` in the step: the autocast region of the forward (and loss), and for
    fp16 a GradScaler (loss scaled for the backward, gradients unscaled before anyone reads them,
    steps with inf/NaN gradients skipped and the scale lowered)."""

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, precision: str, device: torch.device):
        self.dtype = self.DTYPES[precision]
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skipped when the unscaled gradients hold inf/NaN

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()


class BatchOrder:
    """Indices of the batch at step ``s``: a fresh permutation per epoch, seeded by (seed, epoch).

    The last incomplete batch of an epoch is dropped, as DataLoader(drop_last=True) does.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ValueError(f"training.batch_size={batch_size} exceeds the dataset size {n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._cache: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, torch.randperm(self.n, generator=g))
        return self._cache[1][k * self.batch_size:(k + 1) * self.batch_size]


class _MetricsLog:
    """Appends rows to ``metrics.jsonl`` and ``metrics.csv``; on resume, rows past the checkpoint are dropped."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s")

    def __init__(self, run_dir: Path, resume_step: int | None, enabled: bool = True):
        self.jsonl, self.csv = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
        self.enabled = enabled  # one writer per run directory (rank 0 of a sharded run)
        if not enabled:
            return
        rows = []
        if resume_step is not None and self.jsonl.exists():
            rows = [r for r in map(json.loads, self.jsonl.read_text().splitlines()) if r["step"] <= resume_step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS).writerow(row)


def _make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = list(model.parameters())
    # The fused kernel (one pass per parameter) gives the same bits however the run is split, and
    # its square root is not slowed by zeros: torch.sqrt on the CPU is ~25x slower on exact zeros,
    # which a sparse layer's second moments are outside its mask (the per-parameter path spent
    # more than half its step on them at 75% sparsity). Elsewhere: the per-parameter path.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params)
    return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
               foreach=False if not fused else None, fused=fused or None)


_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class Trainer:
    """Owns model, EMA, optimizer, data order and RNG state for one run directory.

    ``model``: train this module instead of building ``config.model`` (e.g. a physically pruned
    model; it must accept the same inputs). ``timestep_range``: (low, high) inclusive, to train
    only on a timestep region. ``plugins``: see :mod:`ebsparse.diffusion.plugins`.
    ``training.distributed: fsdp`` shards the prepared model over the processes of a torchrun
    launch (:mod:`ebsparse.diffusion.distributed`); ``sharded`` is then that setup, else None.
    """

    def __init__(self, config: ExperimentConfig, run_dir: str | Path, device: str | torch.device = "cpu", *,
                 model: nn.Module | None = None, timestep_range: tuple[int, int] | None = None,
                 plugins: Sequence[TrainerPlugin] = ()):
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # every step reuses the last step's activation memory (host_memory.py)
        tc = config.training
        self.sharded = ShardedTraining(self.device) if tc.distributed == "fsdp" else None
        if self.sharded is not None:
            self.sharded.check(config)
            self.device = self.sharded.device
        torch.manual_seed(tc.seed)
        names = [p.name for p in plugins]
        if len(set(names)) != len(names):
            raise ValueError(f"Trainer(plugins=...): plugin names must be unique, got {names}")
        self.plugins = list(plugins)
        T = config.diffusion.num_timesteps
        if timestep_range is not None and not (0 <= timestep_range[0] <= timestep_range[1] < T):
            raise ValueError(f"Trainer(timestep_range={timestep_range}): expected 0 <= low <= high < {T}")
        self.timestep_range = timestep_range
        model = build_model(config.model) if model is None else model
        for p in self.plugins:
            model = p.prepare_model(self, model)
        self.model = model.to(self.device)
        if self.sharded is not None:  # after the plugins: their modules (e.g. sparse ones) are sharded
            self.model = self.sharded.shard(self.model, tc.seed)
        self.ema = EMA(self.model, tc.ema_rate)
        self.optimizer = _make_optimizer(self.model, tc)
        self.amp = MixedPrecision(tc.precision, self.device)
        self.schedule = NoiseSchedule(config.diffusion)
        self.dataset = training_data(config)  # images, or the latents of latent diffusion
        self._check_labels()
        self.order = BatchOrder(len(self.dataset), tc.batch_size, tc.seed)
        self.generator = torch.Generator().manual_seed(tc.seed + 1)
        self.step = 0
        self._saved_step: int | None = None  # the step of this process's last save
        self._saved_config: dict[str, Any] | None = None  # the config of the checkpoint last loaded
        self._saved_numerics: dict[str, Any] | None = None  # its numerics_setting (older checkpoints: none)
        # training time of the run before this process (from the checkpoint) and when fit() started
        self._elapsed_before, self._fit_started = 0.0, None
        self.step_seconds = 0.0
        # this process's training steps and their summed step_seconds: its own measured throughput
        self.timed_steps, self.timed_seconds, self._steps_run = 0, 0.0, 0
        for p in self.plugins:
            p.attach(self)

    def _check_labels(self) -> None:
        labels = getattr(self.dataset, "labels", None)
        if not getattr(self.model, "class_conditional", False) or not isinstance(labels, torch.Tensor):
            return
        classes = self.model.num_classes
        if labels.numel() and int(labels.max()) >= classes:
            raise ValueError(f"model.num_classes={classes} is too small for data.type={self.config.data.type!r}, "
                             f"whose labels go up to {int(labels.max())}")

    # --- state -------------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        opt_tensors, opt_meta = flatten_optimizer_state(self.optimizer.state_dict())
        tensors.update(opt_tensors)
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/train"] = self.generator.get_state()
        if self.device.type == "cuda":  # dropout on the GPU draws from the device generator
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"step": self.step, "config": self.config.to_dict(), "optimizer": opt_meta,
                "elapsed_s": self.elapsed_s(), "plugins": {},
                "backend_choices": backends.recorded(), "numerics": numerics_setting(self.device)}
        if self.amp.scaler is not None:
            meta["grad_scaler"] = self.amp.scaler.state_dict()
        for p in self.plugins:
            p_tensors, p_meta = p.state_tensors()
            tensors.update({f"plugin/{p.name}/{k}": v for k, v in p_tensors.items()})
            meta["plugins"][p.name] = p_meta
        return tensors, meta

    def save(self) -> Path:
        tensors, meta = self.state_tensors()
        # a second save of one step (a stage's final save) replaces the latest instead of keeping it
        same_step = self._saved_step == self.step
        self._saved_step = self.step
        if self.sharded is not None:
            return self.sharded.save(self.run_dir, tensors, meta, self.config.training.keep_last, same_step)
        return save_checkpoint(self.run_dir / CHECKPOINT_NAME, tensors, meta, keep_last=self.config.training.keep_last,
                               replace_latest=same_step)

    def has_checkpoint(self) -> bool:
        """Whether the run directory holds a checkpoint to resume from (the latest or a kept earlier one)."""
        if self.sharded is not None:
            return self.sharded.has_checkpoint(self.run_dir)
        return bool(checkpoint_files(self.run_dir / CHECKPOINT_NAME))

    def load(self, path: str | Path | None = None, *, allow_config_change: bool | None = None) -> None:
        """Restore the state of ``path``; without one, resume the run directory: its latest checkpoint,
        or with a warning the newest kept one that reads and verifies when the latest does not.
        Sharded: ``path`` is a step directory of ``checkpoint.sharded/``. With ``allow_config_change``
        given (a resume), a changed config is refused or recorded before any state is loaded, so the
        error names the changed keys instead of a state dict's missing ones."""
        if self.sharded is not None:
            tensors, meta = self.sharded.load(self.run_dir if path is None else Path(path))
        elif path is None:
            tensors, meta, _ = load_latest_good(self.run_dir / CHECKPOINT_NAME)
        else:
            tensors, meta = load_checkpoint(path)
        saved_model = meta["config"]["model"]
        if saved_model != self.config.model:
            raise ValueError(
                f"cannot resume: the checkpoint's model config {saved_model} differs from the current {self.config.model}"
            )
        self.step = int(meta["step"])
        self._saved_config = meta["config"]
        if allow_config_change is not None:
            self._check_resumed_config(allow_config_change)
        def part(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.model.load_state_dict(part("model/"), strict=True)
        self.ema.load_state_dict(part("ema/"))
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
        torch.set_rng_state(tensors["rng/torch"])
        self.generator.set_state(tensors["rng/train"])
        if self.device.type == "cuda" and "rng/cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
        backends.restore(meta.get("backend_choices", {}))  # the kernels the saved run computed with
        if self.amp.scaler is not None and "grad_scaler" in meta:
            self.amp.scaler.load_state_dict(meta["grad_scaler"])
        self._saved_numerics = meta.get("numerics")
        self._elapsed_before = float(meta.get("elapsed_s", 0.0))
        if path is None:  # the run directory's latest checkpoint is this step's
            self._saved_step = self.step
        for p in self.plugins:
            if p.name not in meta.get("plugins", {}):
                raise ValueError(f"cannot resume: the checkpoint holds no state for plugin {p.name!r}")
            p.load_state_tensors(part(f"plugin/{p.name}/"), meta["plugins"][p.name])

    def images_per_s(self) -> float | None:
        """Images per second of this process's training steps (`train_step` as a whole: data,
        forward, backward, optimizer, EMA and plugin hooks; no sampling or checkpoints), its first
        step left out where it ran more (it measures the backends)."""
        if not self.timed_steps:
            return None
        return self.timed_steps * self.config.training.batch_size / self.timed_seconds

    def elapsed_s(self) -> float:
        """Seconds of training of this run so far, earlier processes of a resumed run included."""
        running = time.time() - self._fit_started if self._fit_started is not None else 0.0
        return self._elapsed_before + running

    def _check_resumed_config(self, allow_change: bool) -> None:
        """Refuse (or, allowed, record) a config that differs from the one the checkpoint was trained with."""
        saved = self._saved_config
        if saved is None:
            return
        changes = config_diff(saved, self.config.to_dict())
        if not changes:
            return
        breaking = resume_breaking_changes(saved, self.config)
        listing = changes_text(changes)
        sparsity_changes = {k: v for k, v in changes.items() if k.split(".")[0] == "sparsity"}
        if sparsity_changes:  # refused even when allowed: the saved masks and schedule belong to the saved section
            keys = changes_text(sparsity_changes)
            raise ValueError(f"cannot resume {str(self.run_dir)!r} with a changed sparsity section ({keys}): the "
                             "checkpoint's masks and mask schedule belong to the saved one; start a new run")
        if breaking and not allow_change:
            keys = changes_text(breaking)
            raise ValueError(f"cannot resume {str(self.run_dir)!r} at step {self.step} with a changed config ({keys}): "
                             "the run would no longer match an uninterrupted one. Drop the --set, or pass "
                             f"--allow-config-change to go on and record the change in {CONFIG_CHANGES_NAME}")
        if self.sharded is not None and not self.sharded.is_main:
            return  # one record per run directory
        record = {"step": self.step, "changes": {k: [old, new] for k, (old, new) in changes.items()},
                  "breaks_exact_resume": sorted(breaking)}
        with open(self.run_dir / CONFIG_CHANGES_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        if breaking:
            print(f"resuming at step {self.step} with a changed config ({listing}); recorded in "
                  f"{self.run_dir / CONFIG_CHANGES_NAME}")

    def _check_resumed_numerics(self) -> None:
        """Warn when the resumed run computes under another setting than the checkpoint's: it goes on,
        but no longer repeats an uninterrupted run bit for bit."""
        saved = self._saved_numerics
        if saved is None:
            return
        now = numerics_setting(self.device)
        changed = {k: (saved[k], now.get(k)) for k in saved if saved[k] != now.get(k)}
        if changed:
            listing = changes_text(changed)
            warnings.warn(f"resuming {str(self.run_dir)!r} at step {self.step} with {listing}: training goes on, "
                          "but will not match an uninterrupted run bit for bit (that needs the checkpoint's setting)")

    # --- one step ----------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's samples (B, *sample shape: images, latents or sequences) and class labels (B,) int64."""
        idx = self.order.indices(step)
        images = getattr(self.dataset, "images", None)
        labels = getattr(self.dataset, "labels", None)
        if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
            x, y = images[idx], labels[idx]
        else:
            items = [self.dataset[int(i)] for i in idx]
            x = torch.stack([item[0] for item in items])
            y = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        if self.config.data.random_flip:
            flip = torch.rand(x.shape[0], generator=self.generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.to(self.device), y.to(self.device)

    def _model_fn(self, labels: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(x_t, t) -> epsilon`` of this step: a class-conditional model (DiT) gets the batch's labels
        and draws its label dropout from the trainer's generator (so a resume is bit-identical)."""
        if not getattr(self.model, "class_conditional", False):
            return self.model
        return functools.partial(_conditional_eps, self.model, labels, self.generator)

    def _lr(self, step: int) -> float:
        tc = self.config.training
        return tc.lr * min(1.0, (step + 1) / tc.warmup) if tc.warmup > 0 else tc.lr

    def train_step(self) -> dict[str, float]:
        """One optimisation step; ``self.step_seconds`` is its wall-clock time without the plugins'
        ``after_step`` work (e.g. ticket tracking), which is what a training stage is charged."""
        t0 = time.perf_counter()
        tc, dc = self.config.training, self.config.diffusion
        self.model.train()
        x0, labels = self._batch(self.step)
        low, high = self.timestep_range or (0, dc.num_timesteps - 1)
        t = sample_timesteps(x0.shape[0], dc.num_timesteps, antithetic=dc.timestep_sampling == "antithetic",
                             low=low, high=high, generator=self.generator).to(self.device)
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
        if self.sharded is not None:  # every rank drew the global batch; it trains its slice
            x0, labels, t, noise = self.sharded.local_batch(x0, labels, t, noise)
        with self.amp.autocast():
            loss = epsilon_loss(self._model_fn(labels), self.schedule, x0, t, noise, dc.loss_reduction)
        self.optimizer.zero_grad(set_to_none=True)
        self.amp.backward(loss, self.optimizer)  # gradients unscaled: plugins and clipping see true values
        lr = self._lr(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        do_step = all([p.after_backward(self) for p in self.plugins])  # every plugin sees every step
        grad_norm = float("nan")
        if do_step:
            if tc.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip, foreach=False)
                grad_norm = float(full(norm))  # sharded gradients give a replicated DTensor
            self.amp.step(self.optimizer)
        self.amp.update()
        for p in self.plugins:
            p.after_optimizer_step(self)
        self.ema.update(self.model)
        self.step += 1
        loss_value = float(loss.detach())
        if self.sharded is not None:
            loss_value = self.sharded.mean(loss_value)
        stats = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}
        self.step_seconds = time.perf_counter() - t0
        self._steps_run += 1
        if self._steps_run > 1 or self.config.training.steps - self.step == 0:
            # A process's first step resolves every layer's backend (`auto` times the candidates: seconds,
            # against ~0.1-0.5 s for a digits step); it counts only when it is the one step there is.
            self.timed_steps += 1
            self.timed_seconds += self.step_seconds
        for p in self.plugins:
            p.after_step(self, stats)
        return stats

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, use_ema: bool = True) -> torch.Tensor:
        if self.sharded is not None:
            raise RuntimeError("Trainer.sample: a sharded model has no whole copy in any one process; sample the "
                               "checkpoint.safetensors that rank 0 joins when fit ends (ebsparse sample RUN_DIR)")
        model = copy.deepcopy(self.model)
        if use_ema:
            self.ema.copy_to(model)
        return sample_images(model.eval(), self.config, n, seed=seed, device=self.device)

    # --- loop --------------------------------------------------------------------------------
    def fit(self, resume: bool | str = False, progress: bool = True,
            callback: Callable[["Trainer", dict[str, float]], None] | None = None, desc: str = "train",
            allow_config_change: bool = False) -> dict[str, Any]:
        """Train to ``training.steps``, writing a checkpoint every ``training.ckpt_every`` steps and at the end.

        ``resume``: ``True`` continues from the run directory's checkpoint (which must exist), ``False``
        refuses a directory that holds one, ``"auto"`` continues if there is one (a stage of a longer
        pipeline). A plugin's ``should_stop`` ends the run early (after a checkpoint).
        ``callback(trainer, stats)`` runs after every step (tests use it to simulate a crash).
        A resume refuses a config that would train differently from the checkpoint's
        (:func:`resume_breaking_changes`) unless ``allow_config_change``; every change it goes on
        with is appended to ``config_changes.jsonl`` (step, keys, old and new values).

        A sharded run (``training.distributed: fsdp``) writes sharded checkpoints, and at the end rank 0
        joins the last one into ``checkpoint.safetensors``.

        Returns ``step``, ``start_step`` (the step this call began at), ``elapsed_s`` (training time
        of the whole run, earlier processes included), ``session_s`` (this call's) and the last
        step's ``loss``, ``lr`` and ``grad_norm`` (absent when no step ran).
        """
        from tqdm.auto import tqdm

        if resume not in (True, False, "auto"):
            raise ValueError(f"Trainer.fit(resume={resume!r}): expected True, False or 'auto'")
        tc = self.config.training
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.run_dir / CHECKPOINT_NAME
        if resume == "auto":
            resume = self.has_checkpoint()
        if resume:
            if not self.has_checkpoint():
                raise FileNotFoundError(f"--resume: no checkpoint at {str(ckpt)!r}; start without --resume")
            self.load(allow_config_change=allow_config_change)
            self._check_resumed_numerics()
        elif self.has_checkpoint():
            raise FileExistsError(
                f"run directory {str(self.run_dir)!r} already holds a checkpoint; pass --resume to continue it "
                "or choose another --run-dir"
            )
        main = self.sharded is None or self.sharded.is_main
        if main:
            (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        log = _MetricsLog(self.run_dir, self.step if resume else None, enabled=main)
        start_step, t0 = self.step, time.time()
        self._fit_started = t0
        last: dict[str, float] = {}
        bar = tqdm(total=tc.steps, initial=self.step, disable=not (progress and main), desc=desc, dynamic_ncols=True)
        # the DDIM code base's loss sums the squared error over an image's pixels: say so, or it reads as huge
        loss_label = "loss (sum/image)" if self.config.diffusion.loss_reduction == "sum" else "loss"
        stop = self.step > 0 and self._should_stop()
        try:
            while self.step < tc.steps and not stop:
                last = self.train_step()
                bar.update(1)
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"{desc}: loss became {last['loss']} at step {self.step}; lower training.lr")
                if tc.log_every and self.step % tc.log_every == 0:
                    elapsed = time.time() - t0
                    row = {"step": self.step, **last,
                           "images_per_s": (self.step - start_step) * tc.batch_size / max(elapsed, 1e-9),
                           "elapsed_s": self.elapsed_s()}
                    log.write(row)
                    bar.set_postfix({loss_label: f"{last['loss']:.4f}"})
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self.write_grid()
                stop = self._should_stop()
                if (tc.ckpt_every and self.step % tc.ckpt_every == 0) or self.step == tc.steps or stop:
                    self.save()
                if callback is not None:
                    callback(self, last)
            if self.sharded is not None and self.has_checkpoint():
                self.sharded.consolidate(self.run_dir, self.run_dir / CHECKPOINT_NAME)
        finally:
            bar.close()
            total = self.elapsed_s()
            self._elapsed_before, self._fit_started = total, None
        return {"step": self.step, "start_step": start_step, "elapsed_s": total, "session_s": time.time() - t0, **last}

    def _should_stop(self) -> bool:
        return any([p.should_stop(self) for p in self.plugins])  # a list: every plugin is asked

    def write_grid(self) -> Path:
        n = self.config.sampling.num_samples
        x = self.sample(n, seed=self.config.training.seed)
        sc = self.config.sampling
        caption = f"step {self.step}, EMA; {sc.sampler}, {sc.timesteps} of {self.config.diffusion.num_timesteps} timesteps"
        return save_grid(x, self.run_dir / "samples" / f"step_{self.step:07d}.png", caption=caption)


def _with_labels(model: nn.Module, y: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return model.eps(x, t, y)


def _conditional_eps(model: nn.Module, y: torch.Tensor, generator: torch.Generator, x: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
    return model.eps(x, t, y, generator)


@torch.no_grad()
def sample_images(model: nn.Module, config: ExperimentConfig, n: int, seed: int = 0,
                  device: str | torch.device = "cpu", batch_size: int | None = None, progress: bool = False,
                  model_fn: Callable | None = None, raw: bool = False) -> torch.Tensor:
    """Draw ``n`` samples with the config's sampler, in batches; reproducible for a given seed.

    Returns images (N, C, H, W), unclipped: the samples of a latent or sequence model are mapped to
    images by its :func:`~ebsparse.diffusion.spaces.sample_space` (``raw=True``: the samples as the
    model generates them). A class-conditional model (DiT) is sampled with uniformly drawn labels and
    its epsilon head; pass ``model_fn(x, t)`` to sample anything else (guidance, timestep-routed models).
    """
    sc = config.sampling
    schedule = NoiseSchedule(config.diffusion)
    space = sample_space(config)
    g = torch.Generator().manual_seed(seed)
    conditional = model_fn is None and getattr(model, "class_conditional", False)
    if conditional:
        labels = torch.randint(0, model.num_classes, (n,), generator=g).to(device)
    batch_size = batch_size or n
    kwargs: dict[str, Any] = dict(timesteps=sc.timesteps, skip_type=sc.skip_type, generator=g)
    if sc.sampler == "ddim":
        kwargs["eta"] = sc.eta
    else:
        kwargs["clip_denoised"] = space.clip_denoised
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x_T = space.noise(b, generator=g).to(device)
        if conditional:
            fn = functools.partial(_with_labels, model, labels[start:start + b])
        else:
            fn = model_fn or model
        x = SAMPLERS[sc.sampler](fn, schedule, x_T, **kwargs)
        out.append((x if raw else space.to_images(x)).cpu())
    return torch.cat(out)


def train(config: ExperimentConfig, run_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True, callback=None, allow_config_change: bool = False) -> dict[str, Any]:
    """Convenience wrapper: ``Trainer(config, run_dir, device).fit(resume=...)``."""
    return Trainer(config, run_dir, device).fit(resume=resume, progress=progress, callback=callback,
                                                allow_config_change=allow_config_change)
