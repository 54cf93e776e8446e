"""EB-Diff-Train end to end: the long-running driver of ``ebsparse eb-train`` (front layer). It wires
the Early-Bird tickets, pruning and timestep regions to the one training loop (``Trainer.fit``)
through trainer plugins.

Stages, each finished by a marker ``stages/<name>.json`` in the run directory, each resumable from
its own checkpoint (``<stage>/checkpoint.safetensors``):

``search``   dense training with ticket tracking (EB, and one ticket per TA-EB region); every
             ticket is shrunk physically from the EMA weights at its pseudo-epoch and written as a
             pruning recipe (``tickets/<name>/``). Continues to ``training.steps`` when a baseline
             needs the fully trained dense model, otherwise stops once every ticket is resolved.
``eb``       the EB ticket trained further (weights kept, no re-init) for its budget.
``ta_eb``    every region ticket trained on its own timesteps from its own ticket (full batches,
             one region after another, or one routed batch); one :class:`TimestepRouter` artifact.
``scratch``  the structure pruned from the fully trained dense model, re-initialised, trained
             for EB's budget (the papers' "Scratch"; its cost includes the dense training).
``train_prune_finetune``   the dense model pruned and fine-tuned.
``eval_<method>``  samples, sample grid, FID of the saved images, #params, MACs, sampling time.

Timing is measured wall-clock of training steps (``StageClock``); mask computation is timed
separately and charged to EB and TA-EB (not to the dense baseline, which does not need it).
Iterations and time are the papers': a method's chain is the dense steps up to its ticket plus its
own training; for TA-EB the region chain of longest training time, regions running in parallel.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion.checkpoint import atomic_write_bytes
from ..diffusion.config import ExperimentConfig
from ..diffusion.plugins import TrainerPlugin
from ..diffusion.trainer import CHECKPOINT_NAME, Trainer
from ..earlybird.accounting import region_parallel_totals, region_row, warn_short_ema
from ..earlybird.config import EarlyBirdConfig
from ..earlybird.heatmap import save_distance_heatmap
from ..earlybird.plugin import StageClock, TicketPlugin, TicketSpec
from ..earlybird.router import TimestepRouter, load_router, save_router
from ..models import build_model, example_inputs
from ..pruning.config import PruningConfig
from ..pruning.importance import taylor_loss
from ..pruning.masks import ChannelMask
from ..pruning.recipe import load_pruned, load_recipe, save_pruned
from ..pruning.shrinking import shrink
from .checkpoints import model_from_checkpoint
from .stages import with_steps

__all__ = ["EBRun"]


class _SaveTickets(TrainerPlugin):
    """Writes every ticket as soon as it is resolved (the EMA weights of that very step), and ends the
    dense run once all are resolved unless ``run_on`` (a baseline needs the full dense model)."""

    name = "ticket_writer"

    def __init__(self, tickets: TicketPlugin, save: Callable[[str, Trainer], dict[str, Any]], run_on: bool):
        self.tickets, self.save, self.run_on = tickets, save, run_on
        self.saved: dict[str, dict[str, Any]] = {}

    def after_step(self, trainer, stats: dict[str, float]) -> None:
        self.write_pending(trainer)

    def write_pending(self, trainer) -> None:
        for name in self.tickets.pending:
            self.saved[name] = self.save(name, trainer)
        self.tickets.pending.clear()

    def should_stop(self, trainer) -> bool:
        self.write_pending(trainer)
        return not self.run_on and self.tickets.all_resolved()


def _say(text: str) -> None:
    """Print without breaking a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(text)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


class EBRun:
    """One run directory of ``ebsparse eb-train``. Call :meth:`run`; every stage is skipped if done."""

    def __init__(self, config: ExperimentConfig, run_dir: str | Path, ta_eb: bool = False,
                 progress: bool = True, log: Callable[[str], None] = _say, fid: bool = True):
        self.config = config
        self.T = config.diffusion.num_timesteps
        self.eb = EarlyBirdConfig.from_dict(config.algorithms.get("earlybird"), self.T)
        self.run_dir = Path(run_dir)
        self.ta_eb = ta_eb
        self.progress = progress
        self.log = log
        self.fid = fid
        self.inputs = example_inputs(config.model)
        self.spec = dict(config.model)

    # --- bookkeeping -------------------------------------------------------------------------
    def marker(self, name: str) -> dict[str, Any] | None:
        p = self.run_dir / "stages" / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def mark(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        _write_json(self.run_dir / "stages" / f"{name}.json", data)
        return data

    def _stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        done = self.marker(name)
        if done is not None:
            self.log(f"[{name}] already done (stages/{name}.json)")
            return done
        return self.mark(name, fn())

    def methods(self) -> list[str]:
        out = ["dense"] if "dense" in self.eb.baselines else []
        out.append("eb")
        if self.ta_eb:
            out.append("ta_eb")
        out += [b for b in ("scratch", "train_prune_finetune") if b in self.eb.baselines]
        return out

    def run(self) -> dict[str, Any]:
        """All stages. Under ``torch.distributed`` rank 0 runs everything except the region training,
        which every rank joins (:mod:`.distributed`); other ranks return ``{}``."""
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            wanted = json.loads(json.dumps({**self.config.to_dict(), "earlybird": self.eb.to_dict(), "ta_eb": self.ta_eb}))
            saved = self.run_dir / "config.json"
            if saved.is_file() and json.loads(saved.read_text()) != wanted:
                # finished stages are reused as they are: they must come from the same settings
                raise ValueError(f"{saved} was written with other settings than this run's; finished stages would "
                                 "not match. Use a new run directory")
            _write_json(saved, wanted)
            search = self._stage("search", self.search)
            self._stage("eb", lambda: self.train_ticket("eb", search))
        if distributed:
            dist.barrier()
            search = self.marker("search")
        if self.ta_eb:
            if distributed:
                if self.marker("ta_eb") is None:
                    from .eb_distributed import train_regions_distributed

                    result = train_regions_distributed(self, search)
                    if rank == 0:
                        self.mark("ta_eb", result)
            else:
                self._stage("ta_eb", lambda: self.train_regions(search))
        if rank != 0:
            return {}
        if "scratch" in self.eb.baselines:
            self._stage("scratch", lambda: self.train_scratch(search))
        if "train_prune_finetune" in self.eb.baselines:
            self._stage("train_prune_finetune", lambda: self.train_prune_finetune(search))
        results = {m: self._stage(f"eval_{m}", lambda m=m: self.evaluate(m)) for m in self.methods()}
        if self.spec.get("type") == "diffusers":
            self._stage("diffusers", self.export_diffusers)
        from .eb_report import write_report

        return write_report(self, search, results, figures=[self.x0_norm_figure(list(results))],
                            extra_notes=[self.step_cost_note(search, results)])

    # --- tickets -----------------------------------------------------------------------------
    def ticket_specs(self) -> list[TicketSpec]:
        eb = self.eb
        specs = [TicketSpec("eb", self._pruning(eb.pruning_ratio, eb.importance, (0, self.T - 1)),
                            self._taylor(0, self.T - 1, eb.importance))]
        if self.ta_eb:
            for i, r in enumerate(eb.regions):
                rng = (r.low, min(r.high, self.T - 1))
                specs.append(TicketSpec(f"region{i}", self._pruning(r.pruning_ratio, eb.region_importance, rng),
                                        self._taylor(*rng, eb.region_importance)))
        return specs

    def _pruning(self, ratio: float, importance: str = "magnitude",
                 t_range: tuple[int, int] | None = None) -> PruningConfig:
        return PruningConfig(pruning_ratio=ratio, importance=importance, taylor_t_range=t_range or (0, self.T - 1),
                             attention=self.eb.attention, head_dim_multiple=self.eb.head_dim_multiple,
                             widths=self.eb.widths, ignored_layers=self.eb.ignored_layers)

    def _taylor(self, lo: int, hi: int, importance: str):
        if importance != "taylor":
            return None
        from ..data import build_dataset
        from ..diffusion.schedule import NoiseSchedule

        ds = build_dataset(self.config.data)
        n = min(self.eb.taylor_batch_size, len(ds))
        images = getattr(ds, "images", None)
        x0 = (images[:n] if isinstance(images, torch.Tensor) else torch.stack([ds[i][0] for i in range(n)])).float()
        schedule = NoiseSchedule(self.config.diffusion)
        seed = self.config.training.seed
        return lambda step: taylor_loss(x0, schedule, (lo, hi), torch.Generator().manual_seed(seed * 7919 + step))

    def pseudo_epoch_steps(self) -> int:
        from ..data import build_dataset

        if self.eb.pseudo_epoch_steps:
            return self.eb.pseudo_epoch_steps
        return max(1, len(build_dataset(self.config.data)) // self.config.training.batch_size)

    def search(self) -> dict[str, Any]:
        eb, tc = self.eb, self.config.training
        needs_dense = bool({"dense", "scratch", "train_prune_finetune"} & set(eb.baselines))
        give_up = min(eb.max_search_steps or tc.steps, tc.steps)
        steps = tc.steps if needs_dense else give_up
        every = self.pseudo_epoch_steps()
        plugin = TicketPlugin(self.ticket_specs(), self.inputs, every, eb.eta, eb.queue_length, give_up_step=give_up)
        clock = StageClock()
        writer = _SaveTickets(plugin, lambda name, tr: self._save_ticket(name, plugin, tr, clock), run_on=needs_dense)
        trainer = Trainer(with_steps(self.config, steps, ckpt_every=every), self.run_dir / "dense",
                          plugins=[clock, plugin, writer])
        tickets = writer.saved
        self.log(f"[search] dense training with ticket tracking: mask every {every} steps, eta {eb.eta}, "
                 f"FIFO of {eb.queue_length}; tickets {[s.name for s in plugin.specs.values()]}")
        trainer.fit(resume="auto", progress=self.progress, desc="dense + ticket search")
        if not plugin.all_resolved():  # the run ended between two pseudo-epochs
            plugin.record(trainer, give_up=True)
            writer.write_pending(trainer)
            trainer.save()
        for name in plugin.trackers:  # on resume, earlier tickets were written by the first process
            tickets.setdefault(name, json.loads((self.run_dir / "tickets" / name / "ticket.json").read_text()))
        figures = {}
        for name, tracker in plugin.trackers.items():
            d = tracker.distances()
            ratio = plugin.specs[name].config.pruning_ratio
            used = tickets[name]
            if used["found"]:
                verdict, marked = f"ticket at pseudo-epoch {used['epoch']} (step {used['step']})", used["epoch"]
            else:
                verdict, marked = f"no ticket by step {used['step']}", None
                if tracker.found:  # the dense run went on (for a baseline) and the masks settled later
                    verdict += f"; settled later at step {tracker.ticket_step}"
                    tickets[name] = {**used, "settled_later_step": tracker.ticket_step}
            figures[name] = str(save_distance_heatmap(
                d, self.run_dir / "figures" / f"distance_{name}.png", ticket_epoch=marked,
                title=f"{name} @ {ratio:g}: {verdict}"))
            _write_json(self.run_dir / "figures" / f"distance_{name}.json",
                        {"steps": tracker.steps, "ticket_epoch": tracker.ticket_epoch, "distances": d.tolist()})
        return {"pseudo_epoch_steps": every, "dense_steps": trainer.step, "dense_train_s": clock.train_s,
                "tracking_s": plugin.tracking_s, "tickets": tickets, "figures": figures}

    def _save_ticket(self, name: str, plugin: TicketPlugin, trainer: Trainer, clock: StageClock) -> dict[str, Any]:
        tracker = plugin.trackers[name]
        found = plugin.resolved[name]
        mask = tracker.ticket_mask if found else tracker.masks[-1]
        config = plugin.specs[name].config
        dense = copy.deepcopy(trainer.model).cpu()
        trainer.ema.copy_to(dense)  # the ticket keeps the EMA weights it was found on (as the reference)
        pruned = shrink(dense.eval(), mask, self.inputs, ignored_layers=config.ignored_layers)
        info = {"name": name, "found": found, "pruning_ratio": config.pruning_ratio, "importance": config.importance,
                "epoch": tracker.ticket_epoch if found else len(tracker.masks) - 1, "step": trainer.step,
                "train_s": clock.train_s, "tracking_s": plugin.tracking_s, "density": mask.density(),
                "max_distance_so_far": float(tracker.distances().max()) if tracker.masks else 0.0,
                "ema_rate": trainer.config.training.ema_rate}
        out = self.run_dir / "tickets" / name
        save_pruned(out, pruned, mask, base=self.spec, example_inputs=self.inputs, config=config, extra=info)
        _write_json(out / "ticket.json", info)
        self.log(f"[search] {name} @ {config.pruning_ratio:g}: " + (
            f"ticket found at pseudo-epoch {info['epoch']} (step {trainer.step})" if found else
            f"NO ticket by step {trainer.step}; using the last mask (pseudo-epoch {info['epoch']})"))
        return info

    def _load_ticket(self, name: str) -> nn.Module:
        model, _ = load_pruned(self.run_dir / "tickets" / name, build_model)
        return model.train()

    # --- training after the ticket -----------------------------------------------------------
    def _finetune(self, stage: str, model: nn.Module, steps: int, timestep_range=None, seed_offset: int = 0,
                  from_scratch: bool = False) -> tuple[nn.Module, float]:
        """Train ``model`` for ``steps`` in ``<run>/<stage>``; returns (EMA weights model, train seconds)."""
        if steps <= 0:
            return model.eval(), 0.0
        warn_short_ema(stage, steps, self.config.training.ema_rate, self.log)
        clock = StageClock()
        warmup = None if from_scratch else self.eb.finetune_warmup
        trainer = Trainer(with_steps(self.config, steps, seed_offset, warmup), self.run_dir / stage, model=model,
                          timestep_range=timestep_range, plugins=[clock])
        trainer.fit(resume="auto", progress=self.progress, desc=stage)
        out = copy.deepcopy(trainer.model)
        trainer.ema.copy_to(out)
        return out.eval(), clock.train_s

    def _finetune_steps(self, ticket_step: int) -> int:
        return self.eb.eb_finetune_steps(self.config.training.steps, ticket_step)

    def _region_steps(self, index: int, ticket_step: int) -> int:
        return self.eb.region_train_steps(index, self.config.training.steps, ticket_step)

    def train_ticket(self, name: str, search: dict[str, Any]) -> dict[str, Any]:
        t = search["tickets"][name]
        steps = self._finetune_steps(t["step"])
        model, train_s = self._finetune(name, self._load_ticket(name), steps)
        recipe = load_recipe(self.run_dir / "tickets" / name)
        save_pruned(self.run_dir / "models" / name, model, ChannelMask.from_json(recipe["groups"]), base=self.spec,
                    example_inputs=self.inputs, config=PruningConfig.from_dict(recipe["pruning"]))
        return {"iterations": t["step"] + steps, "search_steps": t["step"], "train_steps": steps,
                "time_s": t["train_s"] + t["tracking_s"] + train_s, "train_s": train_s,
                "search_s": t["train_s"] + t["tracking_s"], "ticket_found": t["found"]}

    def train_regions(self, search: dict[str, Any]) -> dict[str, Any]:
        regions = self.eb.regions
        names = [f"region{i}" for i in range(len(regions))]
        tickets = [search["tickets"][n] for n in names]
        recipes = [load_recipe(self.run_dir / "tickets" / n) for n in names]
        masks = [ChannelMask.from_json(r["groups"]) for r in recipes]
        configs = [PruningConfig.from_dict(r["pruning"]) for r in recipes]
        if self.eb.region_training == "routed":
            # all region models step together, so they all start at the last region's ticket
            last = max(range(len(regions)), key=lambda i: tickets[i]["step"])
            steps = self._region_steps(last, tickets[last]["step"])
            router = TimestepRouter([self._load_ticket(n) for n in names], regions)
            router, train_s = self._finetune("ta_eb", router, steps)
            rows = [region_row(n, tickets[last], steps, train_s, found=t["found"]) for n, t in zip(names, tickets)]
        else:
            models, rows = [], []
            for i, (n, r, t) in enumerate(zip(names, regions, tickets)):
                steps = self._region_steps(i, t["step"])
                m, s = self._finetune(f"ta_eb/{n}", self._load_ticket(n), steps,
                                      timestep_range=(r.low, min(r.high, self.T - 1)), seed_offset=i + 1)
                models.append(m)
                rows.append(region_row(n, t, steps, s))
            router = TimestepRouter(models, regions).eval()
        save_router(self.run_dir / "models" / "ta_eb", router, self.spec, self.inputs, masks, configs,
                    extra={"region_training": self.eb.region_training})
        return {**region_parallel_totals(rows), "region_training": self.eb.region_training}

    def scratch_structure(self) -> tuple[nn.Module, ChannelMask, PruningConfig]:
        """The papers' Scratch: the fully trained dense model pruned (magnitude, at EB's ratio),
        returned with new random weights in that structure."""
        from ..pruning.pipeline import prune

        config = self._pruning(self.eb.pruning_ratio)
        mask = prune(self._dense_final(), self.inputs, config).mask
        with torch.random.fork_rng():
            torch.manual_seed(self.config.training.seed + 12345)
            fresh = build_model(self.spec)
        return shrink(fresh, mask, self.inputs, ignored_layers=config.ignored_layers).train(), mask, config

    def train_scratch(self, search: dict[str, Any]) -> dict[str, Any]:
        model, mask, config = self.scratch_structure()
        steps = max(1, round(self.eb.eb_budget * self.config.training.steps))  # EB's budget
        model, train_s = self._finetune("scratch", model, steps, from_scratch=True)
        save_pruned(self.run_dir / "models" / "scratch", model, mask, base=self.spec, example_inputs=self.inputs,
                    config=config)
        dense_s = search["dense_train_s"]  # its structure needs the fully trained dense model first
        return {"iterations": search["dense_steps"] + steps, "train_steps": steps, "time_s": dense_s + train_s,
                "train_s": train_s, "search_s": dense_s, "structure_from_step": search["dense_steps"]}

    def _dense_final(self) -> nn.Module:
        return model_from_checkpoint(self.run_dir / "dense" / CHECKPOINT_NAME)[0]

    def train_prune_finetune(self, search: dict[str, Any]) -> dict[str, Any]:
        from ..pruning.pipeline import prune

        config = self._pruning(self.eb.pruning_ratio)
        result = prune(self._dense_final(), self.inputs, config)
        steps = self._finetune_steps(search["tickets"]["eb"]["step"])
        model, train_s = self._finetune("train_prune_finetune", result.model.train(), steps)
        save_pruned(self.run_dir / "models" / "train_prune_finetune", model, result.mask, base=self.spec,
                    example_inputs=self.inputs, config=config)
        dense_s = search["dense_train_s"]
        return {"iterations": search["dense_steps"] + steps, "train_steps": steps, "time_s": dense_s + train_s,
                "train_s": train_s, "search_s": dense_s}

    def dense_result(self, search: dict[str, Any]) -> dict[str, Any]:
        return {"iterations": search["dense_steps"], "train_steps": search["dense_steps"],
                "time_s": search["dense_train_s"], "train_s": search["dense_train_s"], "search_s": 0.0}

    def x0_norm_figure(self, methods: list[str]) -> str:
        """``figures/x0_norm.png`` (+ ``.json``): the x0 prediction's norm along one DDIM trajectory per
        method, all from the same initial noise (:mod:`.eb_diagnostics`)."""
        from ..data import build_dataset
        from .eb_diagnostics import save_line_plot, x0_norm_trajectories
        from .eb_report import NAMES

        models = {NAMES.get(m, m): self.final_model(m).eval() for m in methods}
        data = x0_norm_trajectories(models, self.config, n=8, seed=self.config.training.seed + 1)
        images = getattr(build_dataset(self.config.data), "images", None)
        reference = (float(images[:512].float().flatten(1).pow(2).mean(1).sqrt().mean())
                     if isinstance(images, torch.Tensor) else None)
        out = self.run_dir / "figures" / "x0_norm.png"
        _write_json(out.with_suffix(".json"), {"data_rms": reference, "methods": data})
        sc = self.config.sampling
        return str(save_line_plot({k: (v["t"], v["x0_rms"]) for k, v in data.items()}, out,
                                  f"x0 prediction RMS along one DDIM trajectory ({sc.timesteps} steps, {sc.skip_type}); "
                                  "dashed: data", "t", "RMS of x0", reference=reference))

    def step_cost_note(self, search: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
        """The speed-ups again from per-step costs timed round-robin (:func:`.eb_diagnostics.step_costs`)
        times each chain's steps: what the table's column would be on a machine with steady load."""
        from ..diffusion.spaces import sample_space
        from .eb_diagnostics import step_costs

        shape = sample_space(self.config).shape
        b = self.config.training.batch_size
        g = torch.Generator().manual_seed(0)
        models = {m: self.final_model(m) for m in results if m != "ta_eb"}
        classes = [m.num_classes for m in models.values() if getattr(m, "class_conditional", False)][:1]
        batch = lambda: (torch.randn(b, *shape, generator=g), torch.randint(0, self.T, (b,), generator=g),
                         *[torch.randint(0, c, (b,), generator=g) for c in classes])  # DiT: labels
        if "ta_eb" in results:
            models.update({f"region{i}": m for i, m in enumerate(self.final_model("ta_eb").models)})
        if "dense" not in models:
            return "- step costs: no dense model to compare with."
        cost = step_costs(models, batch)
        rel = {k: v / cost["dense"] for k, v in cost.items()}
        n = search["dense_steps"]
        chains = {"dense": n}  # in dense-step units
        for m, r in results.items():
            if m == "ta_eb":
                chains[m] = max(row["search_steps"] + row["train_steps"] * rel[row["name"]] for row in r["regions"])
            elif m in ("eb", "scratch", "train_prune_finetune"):
                chains[m] = r["iterations"] - r["train_steps"] + r["train_steps"] * rel[m]
        parts = ", ".join(f"{m} {n / c:.2f}x" for m, c in chains.items() if m != "dense")
        costs = ", ".join(f"{k} {v:.2f}" for k, v in rel.items() if k != "dense")
        return (f"- the same speed-ups from training-step costs timed round-robin (forward + backward of a batch of "
                f"{b}, relative to dense: {costs}) times each chain's steps, i.e. what the speed-up column would be "
                f"under steady load: {parts}.")

    def export_diffusers(self) -> dict[str, Any]:
        """``<run>/diffusers/<method>`` (TA-EB: ``<method>/region<k>``): every final model as a folder
        diffusers' ``from_pretrained`` loads; a model no diffusers config describes (pruned without
        ``earlybird.widths: diffusers``) is noted with the reason instead."""
        from ..models.diffusers_export import export_diffusers

        written: dict[str, str] = {}
        for method in self.methods():
            model = self.final_model(method)
            parts = ({f"{method}/region{i}": m for i, m in enumerate(model.models)}
                     if isinstance(model, TimestepRouter) else {method: model})
            for name, m in parts.items():
                try:
                    written[name] = str(export_diffusers(m, self.run_dir / "diffusers" / name, overwrite=True))
                except ValueError as e:
                    written[name] = f"not exported: {e}"
                self.log(f"[diffusers] {name}: {written[name]}")
        return written

    # --- evaluation --------------------------------------------------------------------------
    def final_model(self, method: str) -> nn.Module:
        if method == "dense":
            return self._dense_final()
        if method == "ta_eb":
            return load_router(self.run_dir / "models" / "ta_eb", build_model)[0]
        return load_pruned(self.run_dir / "models" / method, build_model)[0]

    def evaluate(self, method: str) -> dict[str, Any]:
        from ..diffusion.images import save_grid
        from ..diffusion.samplers import describe_sampler
        from ..diffusion.trainer import sample_images
        from ..metrics.counting import count_macs, count_params
        from .eb_report import NAMES
        from ..metrics.sample_fid import samples_fid

        model = self.final_model(method).eval()
        n = self.eb.eval_samples
        t0 = time.perf_counter()
        x = sample_images(model, self.config, n, seed=self.config.training.seed)
        sample_s = time.perf_counter() - t0
        grid = save_grid(x[:64], self.run_dir / "figures" / f"samples_{method}.png",
                         caption=f"{NAMES.get(method, method)}; {describe_sampler(self.config)}")
        fid = samples_fid(x, self.config.data) if self.fid else None
        meta_inputs = example_inputs(self.spec, device="meta")
        if isinstance(model, TimestepRouter):
            from ..earlybird.regions import sampling_shares

            # the papers' TA-EB counts: every timestep t in [0, T - 1] weighted alike, each served by
            # its sampling-time region's model (independent of the sampler's step spacing)
            shares = sampling_shares(model.regions, range(self.T))
            region_macs = [count_macs(copy.deepcopy(m).to("meta"), *meta_inputs).macs for m in model.models]
            region_params = [count_params(m) for m in model.models]
            macs = sum(s * m for s, m in zip(shares, region_macs))
            params = sum(s * p for s, p in zip(shares, region_params))
            extra = {"region_params": region_params, "region_params_sum": sum(region_params),
                     "region_macs": region_macs, "timestep_shares": shares}
        else:
            macs = count_macs(copy.deepcopy(model).to("meta"), *meta_inputs).macs
            params = count_params(model)
            extra = {}
        if method == "dense":
            extra.update(self.dense_result(self.marker("search")))
        else:
            extra.update(self.marker(method) or {})
        return {"method": method, "params": params, "macs": macs, "fid": fid, "samples": n,
                "sample_s": sample_s, "grid": str(grid), **extra}
