"""Early-Bird ticket detection: a FIFO of channel masks and the distance test that ends the search.

Every pseudo-epoch the caller adds the mask the pruner *would* apply now (computed from the EMA
weights). The ticket has emerged at the first pseudo-epoch whose mask is within ``eta`` (normalised
Hamming distance) of each of the ``queue_length - 1`` masks before it, i.e. the pruning decision has
stopped moving. Every mask is kept, so the whole pairwise distance matrix can be drawn afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..pruning.masks import ChannelMask, hamming_distance

__all__ = ["TicketTracker", "distance_matrix"]


def distance_matrix(masks: Sequence[ChannelMask]) -> torch.Tensor:
    """(N, N) float64 matrix of pairwise normalised Hamming distances (symmetric, zero diagonal)."""
    n = len(masks)
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    for i, m in enumerate(masks[1:], 1):
        if m.signature() != masks[0].signature():
            raise ValueError(f"distance_matrix: mask {i} has different groups or sizes than mask 0")
    v = torch.stack([m.vector() for m in masks])
    return (v[:, None, :] != v[None, :, :]).double().mean(dim=2) if v.shape[1] else torch.zeros(n, n, dtype=torch.float64)


@dataclass
class TicketTracker:
    """FIFO of the last ``queue_length`` masks; ``update`` returns True once the ticket is found.

    ``eta``: largest distance that counts as "the same mask" (papers: 0.1). ``queue_length``: 5 in
    the papers, so the newest mask is compared with the 4 before it. The ticket epoch (0-based index
    of the pseudo-epoch whose mask completed the test) and its step are remembered; later masks are
    still recorded (for the heat map) but do not move the ticket.
    """

    eta: float = 0.1
    queue_length: int = 5
    masks: list[ChannelMask] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    ticket_epoch: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"TicketTracker.eta must be a number in [0, 1], got {self.eta!r}")
        if isinstance(self.queue_length, bool) or not isinstance(self.queue_length, int) or self.queue_length < 2:
            raise ValueError(f"TicketTracker.queue_length must be an int >= 2, got {self.queue_length!r}")

    @property
    def found(self) -> bool:
        return self.ticket_epoch is not None

    @property
    def ticket_step(self) -> int | None:
        return None if self.ticket_epoch is None else self.steps[self.ticket_epoch]

    @property
    def ticket_mask(self) -> ChannelMask | None:
        return None if self.ticket_epoch is None else self.masks[self.ticket_epoch]

    def queue_distances(self) -> list[float]:
        """Distances of the newest mask to the (up to ``queue_length - 1``) masks before it, oldest first."""
        if not self.masks:
            return []
        newest = self.masks[-1]
        window = self.masks[-self.queue_length:-1]
        return [hamming_distance(newest, m) for m in window]

    def update(self, mask: ChannelMask, step: int) -> bool:
        """Record the mask of the pseudo-epoch ending at ``step``; True if the ticket is (now or already) found."""
        if self.masks and mask.signature() != self.masks[0].signature():
            raise ValueError("TicketTracker.update: the mask has different groups or sizes than the earlier ones")
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"TicketTracker.update: step {step} must be after the last recorded step {self.steps[-1]}")
        self.masks.append(mask)
        self.steps.append(int(step))
        if self.ticket_epoch is None and len(self.masks) >= self.queue_length:
            if max(self.queue_distances()) <= self.eta:
                self.ticket_epoch = len(self.masks) - 1
        return self.found

    def distances(self) -> torch.Tensor:
        return distance_matrix(self.masks)

    # --- state (JSON only: masks are kept-index lists) -----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"eta": self.eta, "queue_length": self.queue_length, "steps": list(self.steps),
                "ticket_epoch": self.ticket_epoch, "masks": [m.to_json() for m in self.masks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("eta") != self.eta or state.get("queue_length") != self.queue_length:
            raise ValueError(f"TicketTracker.load_state_dict: saved eta/queue_length "
                             f"({state.get('eta')}, {state.get('queue_length')}) differ from ({self.eta}, {self.queue_length})")
        self.masks = [ChannelMask.from_json(m) for m in state["masks"]]
        self.steps = [int(s) for s in state["steps"]]
        self.ticket_epoch = state["ticket_epoch"]
