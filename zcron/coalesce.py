"""Bounded overload (spec §8.13): each job keeps at most one due tick waiting, the newest.

A job's tick that finds no free slot waits (at the scheduler, or in a worker's prefetch
queue). When the job's next tick comes, the older one is recorded `missed`, so an
overloaded pool runs each job about once per period, on time, instead of working off a
backlog of stale ticks (APScheduler's `coalesce`, Kubernetes' `concurrencyPolicy` with
`startingDeadlineSeconds`; `misfire_grace` still caps the wait of slow schedules).

*When* the next tick comes matters: ticks are dispatched ahead of their instant (the
dispatch lead, 0.5 s), so the newer tick arrives while the older one may still get a
slot. Superseding on arrival threw away half of every second at 2 slots and 1,000 jobs/s
(the ticks of :00 were dropped at :00.5 for ticks not due until :01, and the slots stood
idle from .5 to 1.0: 69% of slot time idle, ~370 runs/s). The older tick is dropped at the
newer one's instant instead, if it has not started by then.

The caller owns the items and says whether one still waits (`still_waiting`): a tick that
was dispatched, started or cancelled meanwhile is not recorded again.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Coalescer(Generic[Item]):
    """The newest waiting tick per key, and the older ones to drop at their successor's
    instant."""

    def __init__(self, still_waiting: Callable[[Item], bool]) -> None:
        self.still_waiting = still_waiting
        self.newest: dict[Hashable, Item] = {}
        # (the newer tick's instant, order, older item, the newer tick) to drop then
        self.due_at: list[tuple[float, int, Item, float]] = []
        self.order = itertools.count()

    def add(self, key: Hashable, item: Item, tick: float, instant: float, now: float
            ) -> list[tuple[Item, float]]:  # fmt: skip
        """A tick waits now (`instant`: when it is due, tick plus any delay); the older
        ones it supersedes at once, as (item, the newer tick): those whose successor is
        already due. A successor due later drops its predecessor then (`due`)."""
        older = self.newest.get(key)
        self.newest[key] = item
        if older is None or not self.still_waiting(older):
            return []
        if instant <= now:
            return [(older, tick)]
        heapq.heappush(self.due_at, (instant, next(self.order), older, tick))
        return []

    def due(self, now: float) -> list[tuple[Item, float]]:
        """Older ticks, still waiting, whose successor's instant has come: (item, newer tick)."""
        out = []
        while self.due_at and self.due_at[0][0] <= now:
            _, _, older, tick = heapq.heappop(self.due_at)
            if self.still_waiting(older):
                out.append((older, tick))
        return out

    def next_deadline(self) -> float | None:
        return self.due_at[0][0] if self.due_at else None

    def forget(self, key: Hashable, item: Item) -> None:
        """The item no longer waits (dispatched, started, dropped): forget it as newest."""
        if self.newest.get(key) is item:
            del self.newest[key]
