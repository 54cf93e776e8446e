"""How the papers count a method's cost: iterations and wall time of the slowest chain.

A region model's *chain* is the dense steps that found its ticket (search, shared with the other
chains) plus its own training from that ticket on. With regions trained in parallel (one device per
region, as in the papers), TA-EB costs what its slowest chain costs: the table's time is that chain's search +
training seconds, its iterations that chain's steps ("the subnetwork of longest training time", as
the supplement counts them; the chain with the most steps is kept too), and the speed-up is the
dense model's time over that. One device training the regions one after another instead pays
the search up to the last ticket plus every region's training; the report gives that as a note.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["region_row", "region_parallel_totals", "speedup", "ema_ticket_share", "warn_short_ema"]


def region_row(name: str, ticket: Mapping[str, Any], train_steps: int, train_s: float,
               found: bool | None = None) -> dict[str, Any]:
    """One region's chain: its ticket (``step``, ``train_s``, ``tracking_s``, ``found``) + its training."""
    search_s = float(ticket["train_s"]) + float(ticket["tracking_s"])
    return {"name": name, "ticket_found": bool(ticket["found"] if found is None else found),
            "search_steps": int(ticket["step"]), "train_steps": int(train_steps),
            "iterations": int(ticket["step"]) + int(train_steps), "search_s": search_s, "train_s": float(train_s),
            "time_s": search_s + float(train_s)}


def region_parallel_totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """TA-EB's stage result from its region chains: the slowest chain's iterations and time (regions
    in parallel), the most steps any chain took, and the one-device sequential time for the notes."""
    if not rows:
        raise ValueError("region_parallel_totals: expected at least one region")
    longest = max(rows, key=lambda r: r["iterations"])
    slowest = max(rows, key=lambda r: r["time_s"])
    one_device_s = max(r["search_s"] for r in rows) + sum(r["train_s"] for r in rows)
    return {"iterations": slowest["iterations"], "slowest_chain": slowest["name"],
            "search_steps": slowest["search_steps"], "train_steps": [r["train_steps"] for r in rows],
            "most_iterations": longest["iterations"], "most_iterations_chain": longest["name"],
            "time_s": slowest["time_s"], "search_s": slowest["search_s"],
            "train_s": slowest["train_s"], "one_device_s": one_device_s,
            "region_train_s": [r["train_s"] for r in rows],
            "ticket_found": all(r["ticket_found"] for r in rows),
            "no_ticket": [r["name"] for r in rows if not r["ticket_found"]], "regions": [dict(r) for r in rows]}


def speedup(dense_s: float | None, method_s: float | None) -> float | None:
    """The papers' speed-up: dense training time over the method's (``None`` when either is unknown)."""
    if not dense_s or not method_s:
        return None
    return dense_s / method_s


def ema_ticket_share(ema_rate: float, steps: int) -> float:
    """Weight the EMA still gives its starting point (the freshly pruned ticket) after ``steps``."""
    return math.exp(steps * math.log(ema_rate)) if ema_rate > 0 else 0.0


def warn_short_ema(stage: str, steps: int, ema_rate: float, log: Callable[[str], None] | None = None,
                   limit: float = 0.05) -> float:
    """Warn when a training stage is too short for its EMA to leave the weights it started from:
    the evaluated (EMA) model would still hold a visible share of the untrained ticket. The limit is
    low because an early ticket's loss can be ten times the trained model's: a 12% share of it more
    than doubled a TA-EB region model's loss. Returns the share left."""
    share = ema_ticket_share(ema_rate, steps)
    if share > limit:
        text = (f"{stage}: after {steps} steps at EMA rate {ema_rate:g}, the EMA weights (the ones evaluated) "
                f"are still {share:.0%} the starting weights; train longer (about {_steps_to(ema_rate, limit)} "
                f"steps for < {limit:.0%}) or use a faster training.ema_rate")
        warnings.warn(text, stacklevel=2)
        if log is not None:
            log(f"WARNING {text}")
    return share


def _steps_to(ema_rate: float, share: float) -> int:
    return math.ceil(math.log(share) / math.log(ema_rate)) if 0 < ema_rate < 1 else 0
