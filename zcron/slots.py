"""The scheduler's view of worker slots: credit from `ready` announcements, dispatch choice."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerSlots:
    """One worker as one scheduler sees it.

    `seen` is how many of our jobs the worker had received when it last announced, `sent`
    how many we have sent; jobs in between are in flight and use up its announced free slots.
    """

    identity: bytes
    id: str
    pools: list[str]
    slots: int
    free: int = 0
    seen: int = 0
    sent: int = 0
    last_seen: float = 0.0
    in_flight: list[tuple[int, dict]] = field(default_factory=list)  # (sequence, job message)
    running: dict[str, dict] = field(default_factory=dict)  # run_id -> job message
    # run_id -> job of every run the worker says it runs, whoever dispatched it
    reported: dict[str, str] = field(default_factory=dict)
    parked: frozenset[str] = frozenset()  # run ids not released yet, at its last `ready`
    room: int = 0  # prefetch: jobs it takes beyond its free slots, into its local queue
    queued: frozenset[str] = frozenset()  # run ids in that queue (never started), same time

    @property
    def held(self) -> list[dict]:
        """Job messages of the runs we sent it that it has not reported ended."""
        return [*self.running.values(), *(job for _, job in self.in_flight)]

    @property
    def credit(self) -> int:
        """Free slots not yet used by jobs in flight (< 0: those went to its queue)."""
        return self.free - (self.sent - self.seen)

    @property
    def queue_credit(self) -> int:
        """Jobs it still takes, free slots and queue room together (zcron/prefetch.py)."""
        return self.free + self.room - (self.sent - self.seen)

    def announce(self, msg: dict, now: float) -> list[dict]:
        """Apply a `ready` message; after a worker restart, return the runs it lost."""
        lost: list[dict] = []
        if msg["seen"] < self.seen:  # a new incarnation: what we sent the old one is gone
            lost = [job for _, job in self.in_flight] + list(self.running.values())
            self.in_flight, self.running, self.sent = [], {}, msg["seen"]
        self.pools, self.slots, self.free = list(msg["pools"]), msg["slots"], msg["free"]
        self.seen, self.last_seen = msg["seen"], now
        self.reported = dict(zip(msg["running"], msg.get("running_jobs", []), strict=False))
        self.parked = frozenset(msg.get("parked", ()))
        self.room, self.queued = msg.get("room", 0), frozenset(msg.get("queued", ()))
        while self.in_flight and self.in_flight[0][0] <= self.seen:
            job = self.in_flight.pop(0)[1]
            self.running[job["run_id"]] = job
        return lost

    def assign(self, job: dict) -> None:
        self.sent += 1
        self.in_flight.append((self.sent, job))


class WorkerTable:
    """Live workers by identity; picks the one with the most free slots in a pool."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.workers: dict[bytes, WorkerSlots] = {}

    def announce(self, identity: bytes, msg: dict, now: float) -> list[dict]:
        worker = self.workers.get(identity)
        if worker is None:
            # A worker counts jobs per scheduler id since it started; a restarted scheduler
            # takes that count as its baseline, or the jobs of its predecessor look in flight.
            worker = WorkerSlots(
                identity,
                msg["worker"],
                list(msg["pools"]),
                msg["slots"],
                seen=msg["seen"],
                sent=msg["seen"],
            )
            self.workers[identity] = worker
        return worker.announce(msg, now)

    def taken_by(self, identity: bytes, worker_id: str, now: float) -> bytes | None:
        """The connection of another live worker announcing the same id, if any: a routing
        id carries an incarnation (net.incarnation), so a second process with one worker id
        shows as a second identity, and is refused while the first is heard from."""
        for other in self.workers.values():
            if (other.id == worker_id and other.identity != identity
                    and now - other.last_seen <= self.timeout_s):  # fmt: skip
                return other.identity
        return None

    def pick(self, pool: str, avoid: str | None = None) -> WorkerSlots | None:
        """The worker of `pool` with the most free slots, preferring one other than `avoid`;
        only when none has a free slot, the one with the most room in its prefetch queue
        (a job never waits in a busy worker's queue while another worker has a slot)."""
        best = None
        for worker in self.workers.values():
            if pool not in worker.pools or worker.queue_credit <= 0:
                continue
            free = worker.credit > 0
            key = (free, worker.id != avoid, worker.credit if free else worker.queue_credit)
            if best is None or key > best[0]:
                best = (key, worker)
        return best[1] if best else None

    def started(self, identity: bytes, run_ids: list[str]) -> None:
        """Runs the worker listed queued or parked at its last `ready` have started."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.queued = worker.queued.difference(run_ids)
            worker.parked = worker.parked.difference(run_ids)

    def finished(self, identity: bytes, run_id: str) -> dict | None:
        """Forget a run its worker reports ended (it may not have announced receiving it
        yet); return its job message."""
        worker = self.workers.get(identity)
        if worker is None:
            return None
        job = worker.running.pop(run_id, None)
        if job is None:
            job = next((j for _, j in worker.in_flight if j["run_id"] == run_id), None)
            worker.in_flight = [(s, j) for s, j in worker.in_flight if j["run_id"] != run_id]
        return job

    def active(self, job_name: str) -> list[tuple[WorkerSlots, dict]]:
        """Runs of a job on a worker now: those we sent and it has not reported ended, and
        those it reports running for another scheduler (overlap holds cluster-wide)."""
        found = []
        for worker in self.workers.values():
            ours = worker.held
            found += [(worker, msg) for msg in ours if msg["job"] == job_name]
            mine = {msg["run_id"] for msg in ours}
            found += [
                (worker, {"run_id": run_id, "job": job})
                for run_id, job in worker.reported.items()
                if job == job_name and run_id not in mine
            ]
        return found

    def refresh(self, stalled_from: float, now: float) -> None:
        """After the scheduler's own stall: each worker live when it began gets a fresh
        timeout to be heard."""
        for worker in self.workers.values():
            if stalled_from - worker.last_seen <= self.timeout_s:
                worker.last_seen = max(worker.last_seen, now)

    def holding(self, run_id: str) -> list[tuple[WorkerSlots, str, str | None]]:
        """(worker, job, user) for a run a worker holds: one we sent it (user known) or one
        it reports running for another scheduler (user from the job)."""
        found = []
        for worker in self.workers.values():
            ours = worker.held
            msg = next((m for m in ours if m["run_id"] == run_id), None)
            if msg is not None:
                found.append((worker, msg["job"], msg["user"]))
            elif run_id in worker.reported:
                found.append((worker, worker.reported[run_id], None))
        return found

    def live_ids(self) -> list[str]:
        """The ids of the workers we hear (for peers: a worker heard elsewhere is alive)."""
        return sorted({w.id for w in self.workers.values()})

    def expire(self, now: float) -> list[WorkerSlots]:
        """Forget workers silent for longer than the timeout; return them."""
        dead = [w for w in self.workers.values() if now - w.last_seen > self.timeout_s]
        for worker in dead:
            del self.workers[worker.identity]
        return dead

    def pools(self) -> dict[str, dict[str, int]]:
        """Slots per pool: {"pool": {"workers": n, "slots": n, "free": n}}."""
        summary: dict[str, dict[str, int]] = {}
        for worker in self.workers.values():
            for pool in worker.pools:
                entry = summary.setdefault(pool, {"workers": 0, "slots": 0, "free": 0})
                entry["workers"] += 1
                entry["slots"] += worker.slots
                entry["free"] += max(0, worker.credit)
        return summary
