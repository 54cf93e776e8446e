"""The sparse-to-sparse paper's Tables 1-2 for one model and dataset (``ebsparse s2s-table CONFIG``).

The paper trains Dense and each of Static-DM, RigL-DM and MagRan-DM at S in {0.1, 0.25, 0.5, 0.75,
0.9}, three runs each, and tabulates Dense and the best sparse level of every method (by mean FID):
FID ± std, #params, train and test FLOPs, all normalised to dense. This driver runs that grid with
the config's settings (its ``sparsity:`` section, if any, is the template every sparse run starts
from), one run directory per (method, S, seed), and writes the table in the paper's layout plus the
column the paper does not have: the measured training-step speed-up of the sparse kernels. A run
that already finished is read back, an interrupted one resumes, so the command can be re-run to
complete a grid.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from ..diffusion.config import ExperimentConfig, changes_text, config_diff
from ..diffusion.trainer import Trainer
from ..metrics.counting import count_params
from ..models import build_model
from ..s2s.config import METHODS
from .sparse_train import fid_of_samples, run_sparse_train

__all__ = ["PAPER_SPARSITIES", "METHOD_NAMES", "run_s2s_table", "aggregate", "paper_table"]

#: the sparsity levels S of the paper's grid
PAPER_SPARSITIES = (0.1, 0.25, 0.5, 0.75, 0.9)
METHOD_NAMES = {"dense": "Dense", "static": "Static-DM", "rigl": "RigL-DM", "magran": "MagRan-DM"}
RESULT_NAME = "result.json"


def _run_name(method: str, sparsity: float | None, seed: int) -> str:
    return f"dense-seed{seed}" if method == "dense" else f"{method}-s{sparsity:g}-seed{seed}"


def _config_for(config: ExperimentConfig, method: str, sparsity: float | None, seed: int) -> ExperimentConfig:
    raw = config.to_dict()
    raw["training"]["seed"] = seed
    template = raw.pop("sparsity", None) or {}
    if method != "dense":
        section = {k: v for k, v in template.items() if k not in ("density", "sparsity", "method")}
        raw["sparsity"] = {**section, "method": method, "sparsity": sparsity, "seed": seed}
    return ExperimentConfig.from_dict(raw)


def _dense_row(config: ExperimentConfig, run_dir: Path, device: str, progress: bool) -> dict[str, Any]:
    trainer = Trainer(config, run_dir, device)
    trainer.fit(resume="auto", progress=progress, desc=run_dir.name)
    params = count_params(build_model(config.model))
    return {"method": "dense", "sparsity": 0.0, "FID": fid_of_samples(trainer), "params": params, "params (rel.)": 1.0,
            "train FLOPs": 1.0, "test FLOPs": 1.0, "images/s": trainer.images_per_s(), "step speed-up": 1.0}


def _sparse_row(config: ExperimentConfig, run_dir: Path, device: str, progress: bool) -> dict[str, Any]:
    out = run_sparse_train(config, run_dir, resume=Trainer(config, run_dir, device).has_checkpoint(),
                           device=device, progress=progress, measure=True)
    return {k: v for k, v in out["row"].items() if k != "layers"}


def run_s2s_table(config: ExperimentConfig, run_dir: str | Path, *, methods: Sequence[str] = METHODS,
                  sparsities: Sequence[float] = PAPER_SPARSITIES, seeds: Sequence[int] = (0,), device: str = "cpu",
                  progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or read back) every run of the grid under ``run_dir/runs/`` and write ``table.md`` and
    ``table.json``. Returns the aggregated rows and the table text."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"methods: {unknown} unknown; expected a subset of {list(METHODS)}")
    bad = [s for s in sparsities if not 0.0 < float(s) < 1.0]
    if bad or not sparsities:
        raise ValueError(f"sparsities: expected one or more numbers in (0, 1), got {list(sparsities)}")
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    run_dir = Path(run_dir)
    grid = [("dense", None, s) for s in seeds]
    grid += [(m, float(sp), s) for m in methods for sp in sparsities for s in seeds]
    rows = []
    for i, (method, sparsity, seed) in enumerate(grid, 1):
        one = run_dir / "runs" / _run_name(method, sparsity, seed)
        done = one / RESULT_NAME
        cfg = _config_for(config, method, sparsity, seed)
        if done.is_file():
            _check_same_config(one, cfg)
            rows.append(json.loads(done.read_text()))
            continue
        log(f"[{i}/{len(grid)}] {_run_name(method, sparsity, seed)}")
        row = (_dense_row if method == "dense" else _sparse_row)(cfg, one, device, progress)
        row["seed"] = seed
        done.write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
    groups = aggregate(rows)
    table = paper_table(groups, config)
    (run_dir / "table.json").write_text(json.dumps({"groups": groups, "runs": rows}, indent=2) + "\n")
    (run_dir / "table.md").write_text(table + "\n")
    return {"groups": groups, "runs": rows, "table": table}


def _check_same_config(one: Path, cfg: ExperimentConfig) -> None:
    """A finished run is read back only if it trained this config: otherwise the table would state
    the new settings over the old runs' numbers."""
    saved_file = one / "config.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else None
    now = json.loads(json.dumps(cfg.to_dict()))  # as config.json holds it (tuples as lists)
    if saved != now:
        changes = "no config.json" if saved is None else changes_text(config_diff(saved, now))
        raise ValueError(f"{str(one)!r} holds a finished run of another config ({changes}): choose another "
                         "--run-dir, or remove that run to train it again")


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)  # one run: no spread


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (method, sparsity): means (and FID's std) over the seeds."""
    keys = sorted({(r["method"], float(r["sparsity"])) for r in rows},
                  key=lambda k: (list(METHOD_NAMES).index(k[0]), k[1]))
    out = []
    for method, sparsity in keys:
        runs = [r for r in rows if r["method"] == method and float(r["sparsity"]) == sparsity]
        fid, fid_std = _mean_std([r.get("FID") for r in runs])
        entry = {"method": method, "sparsity": sparsity, "runs": len(runs), "FID": fid, "FID std": fid_std}
        for col in ("params (rel.)", "train FLOPs", "test FLOPs", "images/s", "step speed-up", "mask updates"):
            entry[col] = _mean_std([r.get(col) for r in runs])[0]
        out.append(entry)
    return out


def _best(groups: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """The method's level of lowest mean FID (the densest level when no FID was measured)."""
    mine = [g for g in groups if g["method"] == method]
    if not mine:
        return None
    scored = [g for g in mine if g["FID"] is not None]
    return min(scored, key=lambda g: g["FID"]) if scored else min(mine, key=lambda g: g["sparsity"])


def _fid_text(g: dict[str, Any]) -> str:
    if g["FID"] is None:
        return "n/a"
    return f"{g['FID']:.2f}" if g["FID std"] is None else f"{g['FID']:.2f} ± {g['FID std']:.2f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def paper_table(groups: list[dict[str, Any]], config: ExperimentConfig) -> str:
    """Table 1/2 layout (Dense and the best level of each method), then every level (the paper's
    Figures 2-3 as numbers), then what the columns mean."""
    dense = _best(groups, "dense")
    dense_fid = dense["FID"] if dense else None
    header = ("| Method | FID | #Params | Train FLOPs | Test FLOPs | measured step speed-up | images/s ratio |\n"
              "|---|---|---|---|---|---|---|")
    best_rows = [g for g in (_best(groups, m) for m in METHOD_NAMES) if g is not None]
    top = min((g for g in best_rows if g["method"] != "dense" and g["FID"] is not None),
              key=lambda g: g["FID"], default=None)
    dense_ips = dense["images/s"] if dense else None

    def line(g: dict[str, Any]) -> str:
        name = METHOD_NAMES[g["method"]] + ("" if g["method"] == "dense" else f", S = {g['sparsity']:g}")
        fid = _fid_text(g)
        if g["method"] != "dense" and g["FID"] is not None and dense_fid is not None and g["FID"] < dense_fid:
            fid = f"**{fid}**"  # beats Dense, as the paper marks it
        if g is top:
            name = f"<u>{name}</u>"
        ips = None if not (dense_ips and g["images/s"]) else g["images/s"] / dense_ips
        return (f"| {name} | {fid} | {_x(g['params (rel.)'])} | {_x(g['train FLOPs'])} | {_x(g['test FLOPs'])} "
                f"| {_x(g['step speed-up'])} | {_x(ips)} |")

    runs = max((g["runs"] for g in groups), default=0)
    title = (f"Dense and the best sparse level of each method ({config.model['type']} on {config.data.type}, "
             f"{config.training.steps} steps, mean over {runs} run{'s' if runs != 1 else ''}; "
             "best = lowest mean FID)")
    all_header = ("| Method | S | FID | #Params | Train FLOPs | Test FLOPs | measured step speed-up |\n"
                  "|---|---|---|---|---|---|---|")
    all_rows = [f"| {METHOD_NAMES[g['method']]} | {g['sparsity']:g} | {_fid_text(g)} | {_x(g['params (rel.)'])} "
                f"| {_x(g['train FLOPs'])} | {_x(g['test FLOPs'])} | {_x(g['step speed-up'])} |" for g in groups]
    notes = ["FID: the domain FID of the saved (clipped, 8-bit) samples where the dataset has one (digits: a "
             "digits classifier's features; sketches: an autoencoder's, `ebsparse/metrics/sketch_fid.py`), comparable "
             "between these runs, not with the paper's Inception FIDs; n/a elsewhere (`ebsparse fid` with Inception "
             "weights and a reference folder). Bold: below Dense; underlined: the best sparse model.",
             "#Params, Train and Test FLOPs are relative to Dense, as in the paper (train FLOPs after Evci et al., "
             "counting work; test FLOPs for one sample).",
             "measured step speed-up: forward + backward of the trained sparse model against a fresh dense one on "
             "one training batch, interleaved, min of 5 calls (the paper has no such column).",
             "images/s ratio: each run's own training throughput over the dense run's; runs one after another on a "
             "shared machine, so it drifts with the load."]
    static_like = sorted({METHOD_NAMES[g["method"]] for g in groups if g["method"] not in ("dense", "static")
                          and g.get("mask updates") == 0})
    if static_like:
        notes.append(f"{', '.join(static_like)}: the masks were never updated ({config.training.steps} steps, "
                     "`sparsity.update_every` larger than the run), so these runs trained static masks.")
    return "\n".join([f"### {title}", "", header, *map(line, best_rows), "", "### Every level", "", all_header,
                      *all_rows, "", *[f"- {n}" for n in notes]])
