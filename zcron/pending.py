"""Follow-ups every scheduler holds until one of them has done them (guarantee 10).

Each scheduler keeps the follow-ups it decided (followups.py) in its state directory, so
they outlive a restart; the owner of a follow-up when it comes due starts it, tells its
peers (`outcomes.runs`), and the worker that takes the run tells every scheduler too
(`accepted.runs`), so a peer drops its copy. When the owner dies first, the view changes,
the follow-up has a new owner among the survivors, and that one starts it: once, as a tick.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping

import lmdb
import msgpack

from zcron.chains import children_of
from zcron.errors import ProtocolError
from zcron.followups import FollowUp, FollowUps, Key, Outcome
from zcron.job import HOOK_SUFFIX, Job
from zcron.protocol import MAX_OUTCOMES, check_window

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # follow-ups held at once; beyond, new ones are dropped and counted
MAX_DONE = 100_000  # keys remembered as done (a late outcome must not bring one back)
KEEP_S = 600.0  # a follow-up nobody started is dropped this long past its instant + grace


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class DurableMap(MutableMapping):
    """A dict written through to one LMDB database (keys and values msgpack-able)."""

    def __init__(self, env: lmdb.Environment, name: bytes, load: Callable[[list], object]):
        self.env, self.db = env, env.open_db(name)
        self.data: dict = {}
        with env.begin(db=self.db) as txn:
            for key, value in txn.cursor():
                try:
                    self.data[tuple(msgpack.unpackb(key))] = load(msgpack.unpackb(value))
                except (ValueError, TypeError) as exc:
                    log.error("dropping a damaged pending entry: %r", exc)

    def __getitem__(self, key: tuple) -> object:
        return self.data[key]

    def __setitem__(self, key: tuple, value: object) -> None:
        row = value.wire() if hasattr(value, "wire") else value
        self.data[key] = value
        self._write(lambda txn: txn.put(_pack(list(key)), _pack(row), db=self.db))

    def __delitem__(self, key: tuple) -> None:
        del self.data[key]
        self._write(lambda txn: txn.delete(_pack(list(key)), db=self.db))

    def _write(self, step: Callable[[lmdb.Transaction], object]) -> None:
        """One write; a full map keeps the entry in memory only (the peers hold it too)."""
        try:
            with self.env.begin(write=True) as txn:
                step(txn)
        except lmdb.MapFullError:
            log.error("pending follow-ups: the map is full; this one is kept in memory only")

    def __iter__(self) -> Iterator:
        return iter(list(self.data))

    def __len__(self) -> int:
        return len(self.data)


class Pending:
    """The follow-ups this scheduler knows of and has not seen done."""

    def __init__(
        self, directory: str, counters: dict[str, int], window: tuple[float, float],
        reject: Callable[[str], None] = log.warning,
    ) -> None:  # fmt: skip
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.env = lmdb.open(directory, map_size=256 << 20, max_dbs=2, subdir=True, mode=0o700)
        self.items: DurableMap = DurableMap(self.env, b"followups", FollowUp.from_wire)
        progress = DurableMap(self.env, b"chains", list)
        self.decider = FollowUps(progress)  # type: ignore[arg-type]
        self.done: dict[Key, float] = {}  # key -> when we learnt it was done (wall)
        # (worker, job, tick, attempt) of runs a worker said it took, for jobs whose end
        # sets something off: its `finished` counts only for those (a worker key cannot
        # make chains and hooks run for a run it never took)
        self.taken: dict[tuple, float] = {}
        self.counters = counters
        self.window, self.reject = window, reject  # how far back and ahead wire times may be
        self.jobs: Mapping[str, Job] = {}
        self.children: dict[str, tuple[str, ...]] = {}
        self.chained: set[str] = set()  # jobs with `after`: their first attempts are follow-ups
        self.outgoing: list[list] = []  # our own outcomes, for the peers
        self.started: list[list] = []  # keys we started, for the peers

    def in_window(self, outcomes: list[Outcome], now: float, what: str) -> bool:
        """Every tick and end within [now - retention, now + ahead] (spec §7), else the
        message is dropped and counted: nothing out of it is persisted."""
        behind, ahead = self.window
        try:
            for out in outcomes:
                check_window(out.tick, now, behind, ahead, f"{what} tick")
                check_window(out.ended, now, behind, ahead, f"{what} end")
        except ProtocolError as exc:
            self.reject(f"dropped {what}: {exc}")
            return False
        return True

    def on_accepted(self, msg: dict, now: float) -> None:
        """A worker's `accepted`: follow-ups done, and the runs whose end we wait for."""
        runs = msg.get("runs", [])
        self.heard_done(runs, now)
        for job, tick, attempt in runs:
            if self.has_followups(job):
                self.taken[(msg["worker"], job, float(tick), attempt)] = now
        while len(self.taken) > MAX_DONE:
            del self.taken[next(iter(self.taken))]

    def on_finished(self, msg: dict, worker: str, now: float) -> None:
        """A worker's `finished` (with the run's tick, attempt and end: all or none), for
        a run it said it took."""
        if "tick" not in msg or not self.has_followups(msg["job"]):
            return
        if self.taken.pop((worker, msg["job"], float(msg["tick"]), msg["attempt"]), None) is None:
            return self.reject(f"finished of a run worker {worker} did not take: "
                               f"{msg['job']!r:.60} tick {msg['tick']:.3f}")  # fmt: skip
        out = Outcome(msg["run_id"], msg["job"], msg["tick"], msg["attempt"], msg["status"],
                      msg.get("exit_code"), msg["ended"], worker)  # fmt: skip
        if self.in_window([out], now, "finished"):
            self.note(out)

    def on_outcomes(self, msg: dict, now: float) -> None:
        """A peer's `outcomes`: the ends it recorded, and the follow-ups it started."""
        rows = [Outcome.from_wire(row) for row in msg["outcomes"]]
        if self.in_window(rows, now, "outcomes"):
            for out in rows:
                self.note(out)
            self.heard_done(msg["runs"], now)

    def set_jobs(self, jobs: Mapping[str, Job]) -> None:
        self.jobs, self.children = jobs, children_of(jobs)
        self.chained = {name for name, job in jobs.items() if job.after}

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def note(self, out: Outcome, ours: bool = False) -> None:
        """An outcome heard (ours: recorded by us, so the peers are told of it)."""
        if ours and self.has_followups(out.job):
            self.outgoing.append(out.wire())
        for followup in self.decider.decide(out, self.jobs, self.children):
            self.add(followup)

    def has_followups(self, name: str) -> bool:
        """Whether a job's ends can set anything off (peers need hear of no other)."""
        job = self.jobs.get(name)
        return job is not None and bool(job.retries or job.on_failure or name in self.children)

    def add(self, followup: FollowUp) -> None:
        key = followup.key
        if key in self.done or key in self.items:
            return
        if len(self.items) >= MAX_PENDING:
            self.count("followups_dropped")
            log.error("follow-up %s of %s dropped: %d pending", followup.kind, key, MAX_PENDING)
            return
        self.items[key] = followup

    def mark_done(self, key: Key, now: float) -> None:
        self.done[key] = now
        if key in self.items:
            del self.items[key]
        while len(self.done) > MAX_DONE:
            del self.done[next(iter(self.done))]

    def heard_done(self, keys: list[list], now: float) -> None:
        """Runs a peer started or a worker took: [[job, tick, attempt], ...]; only those
        that can be follow-ups are remembered (a retry, a hook, a chained job's run)."""
        for job, tick, attempt in keys:
            if attempt > 1 or job.endswith(HOOK_SUFFIX) or job in self.chained:
                self.mark_done((job, float(tick), attempt), now)

    def due(self, now: float) -> list[FollowUp]:
        return sorted((f for f in self.items.values() if f.at <= now), key=lambda f: f.at)

    def next_at(self, now: float, recheck_s: float) -> float | None:
        """When to look again: the next instant to come, or in `recheck_s` while due ones
        wait for their owner (a view change may make them ours)."""
        if not self.items:
            return None
        ats = [f.at for f in self.items.values()]
        future = [at for at in ats if at > now]
        soonest = min(future) if future else None
        if len(future) < len(ats):
            soonest = min(soonest or now + recheck_s, now + recheck_s)
        return soonest

    def fire_due(
        self, now: float, mine: Callable[[Job, float], bool],
        start: Callable[[FollowUp, Job], None],
    ) -> None:  # fmt: skip
        """Start the due follow-ups we own; drop those nobody started long past their time."""
        for followup in self.due(now):
            job = self.jobs.get(followup.job)
            if job is None or now > followup.at + job.misfire_grace + KEEP_S:
                self.count("followups_expired")
                del self.items[followup.key]
            elif mine(job, followup.at):
                start(followup, job)  # first: a stall raised in it leaves it to the peers
                self.mark_done(followup.key, now)
                self.started.append(list(followup.key))

    def take_messages(self) -> list[dict]:
        """What to tell the peers: `outcomes` messages of at most MAX_OUTCOMES rows each."""
        size, messages = MAX_OUTCOMES, []
        while self.outgoing or self.started:
            messages.append({"outcomes": self.outgoing[:size], "runs": self.started[:size]})
            self.outgoing, self.started = self.outgoing[size:], self.started[size:]
        return messages

    def forget_old(self, now: float) -> None:
        """Done keys and half-finished chains older than a day are let go."""
        horizon = now - 86400.0
        for key in [k for k, at in self.done.items() if at < horizon]:
            del self.done[key]
        self.decider.forget_before(horizon)

    def close(self) -> None:
        self.env.close()
