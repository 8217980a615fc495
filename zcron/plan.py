"""The scheduler's plan: its jobs and the heap of their next dispatch instants.

No per-second scan of all jobs: each fired tick pushes that job's next instant onto the
heap, so the loop's cost follows the ticks that are due. A job's entries carry the job's
generation: a changed or removed job's older entries are skipped when they come up.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from zcron.job import Job

# Ticks go to a worker this long before their instant; the worker parks the process and
# releases it at the instant (see process.py). Jobs whose overlap policy must be decided at
# the instant (forbid, replace) are dispatched at the instant instead.
LEAD_S = 0.5
# Many jobs due at one instant are dispatched earlier still, up to this much more: the one
# pushed k-th for an instant goes k / ARM_RATE_PER_S earlier, so a burst's processes are
# spawned over the seconds before its instant rather than after it (measured: two workers
# on two cores arm ~2,000 jobs/s).
MAX_EXTRA_LEAD_S = 2.5
ARM_RATE_PER_S = 2000.0
MAX_LEAD_S = LEAD_S + MAX_EXTRA_LEAD_S


class Due(NamedTuple):
    """One heap entry: a tick of a job (or of a one-off push), dispatched at `dispatch_at`."""

    dispatch_at: float
    tick: float
    generation: int
    job: str


class Plan:
    """Jobs by name, their next instants, and the heap of due entries."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.generation: dict[str, int] = {}
        self.next_instant: dict[str, float] = {}
        self.due: list[Due] = []
        self.due_at: dict[float, int] = {}  # instant -> job entries on the heap for it
        self.queued: dict[str, float] = {}  # job -> newest tick waiting here for a slot
        self.pushed: dict[str, dict] = {}  # one-off jobs from `zcron push`, by name

    def plan(self, job: Job, instant: float | None) -> None:
        """Put the job's next instant on the heap (invalidating older entries)."""
        self.push(job, instant, self.new_generation(job.name))

    def new_generation(self, name: str) -> int:
        generation = self.generation.get(name, 0) + 1
        self.generation[name] = generation
        return generation

    def push(self, job: Job, instant: float | None, generation: int) -> None:
        if instant is None:
            self.next_instant.pop(job.name, None)
            return
        self.next_instant[job.name] = instant
        ahead = self.due_at.get(instant, 0)  # jobs already due at that instant
        self.due_at[instant] = ahead + 1
        # The more there are, the earlier this one goes (see MAX_EXTRA_LEAD_S).
        lead = LEAD_S + min(MAX_EXTRA_LEAD_S, ahead / ARM_RATE_PER_S)
        if job.quorum:  # a fixed lead bounds which ticks a dead owner may have sent (takeover)
            lead = LEAD_S
        if job.overlap != "allow":
            lead = 0.0
        start = instant + job.delay_s  # jitter: the worker releases it this much later
        heapq.heappush(self.due, Due(start - lead, instant, generation, job.name))

    def plan_push(self, name: str, msg: dict) -> None:
        """A one-off from `zcron push`: dispatched LEAD_S before its instant, then gone."""
        self.pushed[name] = msg
        generation = self.new_generation(name)
        heapq.heappush(self.due, Due(msg["tick"] - LEAD_S, msg["tick"], generation, name))

    def pop_due(self, until: float) -> Due | None:
        """The next entry due by `until`, or None."""
        if self.due and self.due[0].dispatch_at <= until:
            return heapq.heappop(self.due)
        return None

    def drop_push(self, name: str) -> None:
        """Forget a delayed push before it fires (its heap entry is skipped when it comes)."""
        self.pushed.pop(name, None)
        self.generation.pop(name, None)

    def take_push(self, entry: Due) -> dict | None:
        """The one-off this entry is for (forgotten: it fires once), or None."""
        msg = self.pushed.pop(entry.job, None)
        if msg is not None:
            self.generation.pop(entry.job, None)
        return msg

    def current(self, entry: Due) -> Job | None:
        """The entry's job when the entry is still its newest plan (else it changed or went)."""
        left = self.due_at.get(entry.tick, 0) - 1
        if left > 0:
            self.due_at[entry.tick] = left
        else:
            self.due_at.pop(entry.tick, None)
        if self.generation.get(entry.job) != entry.generation:
            return None
        return self.jobs[entry.job]

    def replace_jobs(self, jobs: dict[str, Job]) -> None:
        """The new job set; entries of removed jobs are skipped when they come up."""
        for name in set(self.jobs) - set(jobs):
            self.generation.pop(name, None)
            self.next_instant.pop(name, None)
        self.jobs = jobs

    def handled(self, name: str, last: float | None) -> float | None:
        """The newest tick fired (`last`) or waiting here for a slot."""
        if last is None:
            return None
        return max(last, self.queued.get(name, last))

    def next_due(self) -> float | None:
        return self.due[0].dispatch_at if self.due else None
