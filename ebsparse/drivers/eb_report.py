"""The papers' table (method, #params, MACs, FID, iterations, measured speed-up) and the notes that
make it honest: whether each ticket really appeared, and how the TA-EB regions were timed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["format_table", "write_report"]

NAMES = {"dense": "Unpruned (dense)", "eb": "EB-Diff-Train (EB)", "ta_eb": "EB-Diff-Train (TA-EB)",
         "scratch": "Scratch (EB structure)", "train_prune_finetune": "Train-prune-finetune"}


def _fmt_count(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table; speed-up = dense training seconds / the method's seconds (both measured)."""
    dense_s = results.get("dense", {}).get("time_s")
    rows = ["| method | #params | MACs | FID | iterations | train time (s) | speed-up vs dense |",
            "|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        fid = "n/a" if r.get("fid") is None else f"{r['fid']:.2f}"
        speed = f"{dense_s / r['time_s']:.2f}x" if dense_s and r.get("time_s") else "n/a"
        name = NAMES.get(method, method)
        if method in ("eb", "ta_eb") and r.get("ticket_found") is False:
            name += " (no ticket: last mask)"
        rows.append(f"| {name} | {_fmt_count(r['params'])} | {_fmt_count(r['macs'])} | {fid} | "
                    f"{r['iterations']} | {r['time_s']:.1f} | {speed} |")
    return "\n".join(rows)


def _notes(run, search: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[str]:
    eb = run.eb
    every = search["pseudo_epoch_steps"]
    notes = []
    for name, t in search["tickets"].items():
        if t["found"]:
            notes.append(f"- ticket `{name}` (pruning_ratio {t['pruning_ratio']:g}): found at pseudo-epoch {t['epoch']} "
                         f"= step {t['step']} (mask every {every} steps, eta {eb.eta}, FIFO {eb.queue_length}); "
                         f"largest distance between any two masks up to then: {t.get('max_distance_so_far', 0):.3f}.")
            if t["epoch"] == eb.queue_length - 1:
                notes.append(f"  Caution: that is the earliest pseudo-epoch the FIFO allows, i.e. the masks never moved "
                             f"by more than eta. The masks are computed from the EMA weights (rate {t.get('ema_rate')}: "
                             f"an average over ~{1 / max(1 - t.get('ema_rate', 0), 1e-9):.0f} steps), so very early "
                             f"masks can still mostly reflect the initialisation.")
        else:
            notes.append(f"- ticket `{name}` (pruning_ratio {t['pruning_ratio']:g}): **no ticket appeared** by step "
                         f"{t['step']} (the masks kept moving more than eta {eb.eta}); the last mask was pruned instead." +
                         (f" (The dense run went on and its masks settled at step {t['settled_later_step']}, after the "
                          f"search limit max_search_steps.)" if t.get("settled_later_step") else ""))
    if "ta_eb" in results:
        from ..earlybird.regions import weighted_ratio

        r = results["ta_eb"]
        how = {
            "routed": "routed batch: one process, every sample goes to its region's model and all region models "
                      "step together, so the time is the sum over regions (no parallel hardware assumed)",
            "sequential": "one region model after the other in one process: the time is the sum over regions" + (
                f"; run region-parallel (one machine per region, as the papers train them), the same measured "
                f"steps would take search + the slowest region = {r['search_s'] + max(r['region_train_s']):.1f} s, "
                f"a speed-up of {results['dense']['time_s'] / (r['search_s'] + max(r['region_train_s'])):.2f}x vs dense"
                if r.get("region_train_s") and results.get("dense", {}).get("time_s") else ""),
            "processes": f"{r.get('world_size')} processes (torch.distributed), one process group per region: the "
                         "time is the wall-clock of the parallel phase, i.e. regions count as running at the same "
                         "time, each on its own processes (the per-region seconds are in results.json)",
        }.get(r.get("region_training"), str(r.get("region_training")))
        notes.append(f"- TA-EB regions {', '.join(map(str, eb.regions))} (timestep-weighted average ratio "
                     f"{weighted_ratio(eb.regions, run.T):.3f}); #params is the sum of the region models, MACs the "
                     f"average per sampling step over the sampler's timesteps. Timing: {how}.")
    notes.append("- time = measured wall-clock of training steps on this machine: EB/TA-EB include the dense "
                 "steps before the ticket and the mask computations; checkpoint writes and sampling are excluded; "
                 "train-prune-finetune includes the full dense training. FID: " +
                 ("domain FID (digits classifier features) of " if run.config.data.type == "digits" else "not computed for ") +
                 f"{eb.eval_samples} samples per method.")
    return notes


def write_report(run, search: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    table = format_table(results)
    notes = _notes(run, search, results)
    text = "\n".join([table, "", *notes, ""])
    out = Path(run.run_dir)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"search": search, "results": results}, indent=1) + "\n")
    run.log(text)
    figs = [*search["figures"].values(), *(r["grid"] for r in results.values())]
    run.log("figures: " + ", ".join(figs))
    return {"table": table, "notes": notes, "results": results, "search": search}
