"""The papers' table (method, #params, MACs, FID, iterations, measured speed-up) and the notes that
make it honest: whether each ticket really appeared, and how the TA-EB regions were timed.

Every column means what the paper's does: FID of the saved (clipped, 8-bit) images; iterations and
time of the method's chain (dense steps to the ticket + its own training; for TA-EB the region
chain of longest training time, regions in parallel); speed-up = dense time / that time; TA-EB's #params and MACs
averaged over the timesteps t in [0, T - 1] by the region serving each, with the region models'
summed parameters (what a user stores) in a column of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..earlybird.accounting import speedup

__all__ = ["format_table", "write_report"]

NAMES = {"dense": "Unpruned (dense)", "eb": "EB-Diff-Train (EB)", "ta_eb": "EB-Diff-Train (TA-EB)",
         "scratch": "Scratch (pruned trained dense, re-init)", "train_prune_finetune": "Train-prune-finetune"}


def _fmt_count(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _no_ticket(method: str, r: dict[str, Any]) -> str:
    if method == "ta_eb" and r.get("no_ticket"):
        steps = {row["name"]: row["search_steps"] for row in r.get("regions", [])}
        return " (no ticket: " + ", ".join(f"{n} by step {steps.get(n, '?')}" for n in r["no_ticket"]) + "; last mask)"
    if method in ("eb", "ta_eb") and r.get("ticket_found") is False:
        return f" (no ticket by step {r.get('search_steps', '?')}: last mask)"
    return ""


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table; speed-up = dense training seconds / the method's seconds (both measured)."""
    dense_s = results.get("dense", {}).get("time_s")
    rows = ["| method | #params | #params stored | MACs | FID (clipped) | iterations | wall time (s) | speed-up |",
            "|---|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        fid = "n/a" if r.get("fid") is None else f"{r['fid']:.2f}"
        x = speedup(dense_s, r.get("time_s"))
        speed = "n/a" if x is None else f"{x:.2f}x"
        name = NAMES.get(method, method) + _no_ticket(method, r)
        stored = _fmt_count(r.get("region_params_sum", r["params"]))
        rows.append(f"| {name} | {_fmt_count(r['params'])} | {stored} | {_fmt_count(r['macs'])} | {fid} | "
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
                      "step together from the last region's ticket",
            "sequential": "every region model on full batches of its own timesteps from its own ticket, measured one "
                          "after the other in one process",
            "processes": f"{r.get('world_size')} processes (torch.distributed), one process group per region "
                         f"(wall-clock of the parallel phase {r.get('parallel_wall_s', 0):.1f} s)",
        }.get(r.get("region_training"), str(r.get("region_training")))
        chains = "; ".join(f"{c['name']}: {c['search_steps']} + {c['train_steps']} steps, "
                           f"{c['search_s']:.1f} + {c['train_s']:.1f} s" for c in r.get("regions", []))
        dense_s = results.get("dense", {}).get("time_s")
        one = r.get("one_device_s")
        one_x = speedup(dense_s, one)
        notes.append(f"- TA-EB regions {', '.join(map(str, eb.regions))} (timestep-weighted average ratio "
                     f"{weighted_ratio(eb.regions, run.T):.3f}). #params and MACs are averaged over t in "
                     f"[0, {run.T - 1}] by the region serving each t; '#params stored' is the sum of the region "
                     f"models. Training: {how}. Iterations and time are those of the chain of longest training time (search to its "
                     f"ticket + its own training, regions in parallel as in the papers): {chains}." +
                     (f" On one device, regions one after another: {one:.1f} s"
                      + (f" ({one_x:.2f}x vs dense)." if one_x else ".") if one is not None else ""))
    notes.append("- time = measured wall-clock of training steps on this machine: EB/TA-EB include the dense "
                 "steps before the ticket and the mask computations; checkpoint writes and sampling are excluded; "
                 "train-prune-finetune includes the full dense training; Scratch trains the structure pruned from the "
                 "fully trained dense model, re-initialised, for EB's budget, and its time includes that dense "
                 "training. FID: " +
                 ("domain FID (digits classifier features) of the saved images (clipped to [-1, 1], 8 bits) of "
                  if run.config.data.type == "digits" else "not computed for ") +
                 f"{eb.eval_samples} samples per method, " + _sampler(run) + ".")
    return notes


def _sampler(run) -> str:
    sc = getattr(run.config, "sampling", None)
    if sc is None:
        return "the config's sampler"
    return f"{sc.sampler.upper()} {sc.timesteps} steps ({sc.skip_type} skip, eta {sc.eta:g})"


def write_report(run, search: dict[str, Any], results: dict[str, dict[str, Any]],
                 figures: list[str] = (), extra_notes: list[str] = ()) -> dict[str, Any]:
    table = format_table(results)
    notes = [*_notes(run, search, results), *extra_notes]
    text = "\n".join([table, "", *notes, ""])
    out = Path(run.run_dir)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"search": search, "results": results}, indent=1) + "\n")
    run.log(text)
    figs = [*search["figures"].values(), *(r["grid"] for r in results.values()), *figures]
    run.log("figures: " + ", ".join(figs))
    return {"table": table, "notes": notes, "results": results, "search": search}
