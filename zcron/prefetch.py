"""Prefetch: a worker takes jobs beyond its free slots into a bounded local queue.

With `slots = 2` every job used to pay a round trip before it could start: a slot frees,
the worker announces it (`ready`), the scheduler sends the next job, the worker arms and
releases it. A worker now takes up to `prefetch` jobs more than its slots (default
max(slots, 100)) and starts the next queued one the moment a slot frees: `slots` limits
running commands, not messages.

Credit stays exact. Each `ready` says `free` (slots neither running nor promised to a
queued job) and `room` (what its queue still takes); a scheduler sends a job to the
worker with the most free slots, and to a queue only when no worker of the pool has a
free slot (slots.WorkerTable.pick). When a worker frees up later while jobs of ours sit in
another worker's queue, the scheduler `recall`s them (oldest tick first, as many as there
are free slots); the worker answers `returned` for those not started yet, and they are
dispatched again (same run id: they never started, so nothing of them is recorded). So a
quick job never waits in a busy worker's queue while another worker is idle, except for
the recall's two messages.

The queued jobs are armed ahead (runs.py `held` once their instant has come): their
shells wait parked, so a freed slot starts the next one with a pipe write, not a spawn;
a recall of one closes its parked shell's stdin (it exits, recorded nowhere).

Queued jobs are never started, like parked runs: a worker found dead with jobs in its
queue (as its last `ready` listed them) has them dispatched again elsewhere under the
parked runs' rules (scheduler.expire_workers, decide_parked_if_due). A draining worker
returns its queue at once (it would refuse those jobs). Each job keeps at most one tick in
a worker's queue, the newest (spec §8.13); the older one is recorded `missed` there when
the newer one's instant comes (coalesce.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from zcron.slots import WorkerSlots

# 100 jobs due at one instant all wait parked before it, at 2 slots: p99 lateness 71 ms
# against 180 ms with 32 (the rest waited for a round trip and a spawn after the tick), and
# 7,534 of 10,000 started at 1,000 jobs/s against 6,312. Parked shells cost ~0.24 MiB PSS
# each while they wait (81 against 65 MiB peak at 100 jobs/s); an idle worker parks none.
DEFAULT_PREFETCH_MIN = 100
RECALL_AGAIN_S = 1.0  # a recall not answered (the run had started) may be sent again


def prefetch_of(configured: int | None, slots: int) -> int:
    """The queue's bound: as configured, else max(slots, DEFAULT_PREFETCH_MIN)."""
    return max(slots, DEFAULT_PREFETCH_MIN) if configured is None else configured


def park_ahead(prefetch: int, slots: int, runs_room: int) -> int:
    """How many queued jobs are armed ahead (their shells parked, spawned while every slot
    is busy) so that a freed slot costs one pipe write, not a spawn: the whole queue,
    within the open files left (`runs_room`: how many runs' fds fit). Parking only as many
    as the slots left the next run's spawn on the critical path: at 2 slots and 1,000
    jobs/s a run's shell was armed 2.4 ms before its release (p50) and still starting up,
    ~300 runs/s; the whole queue parked, ~400, with the slots half idle for other reasons
    (coalesce.py). A parked bash costs ~0.3 MiB PSS (100 measured: 29.7 MiB; dash 12.4)."""
    return max(0, min(prefetch, runs_room - slots))


def capacity(slots: int, prefetch: int, running: int, queued: int) -> tuple[int, int]:
    """(free, room) for a `ready`: slots nobody holds, and what the queue still takes."""
    held = running + queued
    free = max(0, slots - held)
    room = max(0, slots + prefetch - max(held, slots))
    return free, room


def take_all(queue: deque[dict]) -> dict[str, list[str]]:
    """Empty the queue; its run ids by scheduler (a draining worker returns them)."""
    returned: dict[str, list[str]] = {}
    while queue:
        msg = queue.popleft()
        returned.setdefault(msg["scheduler"], []).append(msg["run_id"])
    return returned


class Recalls:
    """The scheduler's side: which queued runs to ask back from busy workers."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}  # run id -> monotonic time its recall went

    def due(self, workers: Iterable[WorkerSlots], now: float) -> list[tuple[WorkerSlots, str]]:
        """(worker, run id) to recall now: runs of ours in the queue of a worker with no
        free slot whose pool has a worker with a free slot, oldest tick first, at most as
        many per pool as free slots not already spoken for by recalls in flight."""
        self.sent = {r: at for r, at in self.sent.items() if now - at < RECALL_AGAIN_S}
        workers = list(workers)
        spare: dict[str, int] = {}
        for worker in workers:
            if worker.credit > 0:
                for pool in worker.pools:
                    spare[pool] = spare.get(pool, 0) + worker.credit
        if not spare:
            return []
        candidates = sorted(queued_runs(workers, spare, self.sent))
        # Recalls in flight will use free slots when their runs come back: counted first.
        budget = sum(w.credit for w in workers if w.credit > 0) - len(self.sent)
        chosen: list[tuple[WorkerSlots, str]] = []
        for _, run_id, worker, pool in candidates:
            if budget <= 0:
                break
            if spare[pool] <= 0:
                continue
            spare[pool] -= 1
            budget -= 1
            self.sent[run_id] = now
            chosen.append((worker, run_id))
        return chosen

    def answered(self, run_id: str) -> None:
        self.sent.pop(run_id, None)


def queued_runs(
    workers: list[WorkerSlots], pools: dict[str, int], skip: dict[str, float]
) -> list[tuple[float, str, WorkerSlots, str]]:
    """(tick, run id, worker, pool) of our runs queued at workers without a free slot, in
    the given pools, except those in `skip`."""
    found = []
    for worker in workers:
        if worker.free > 0 or not worker.queued:
            continue
        for run_id in worker.queued:
            msg = worker.running.get(run_id)
            if msg is not None and msg["pool"] in pools and run_id not in skip:
                found.append((msg["tick"], run_id, worker, msg["pool"]))
    return found
