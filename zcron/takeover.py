"""The scheduler's side of the peer protocol: heartbeats, view changes, catch-up, claims.

A mixin of Scheduler (see docs/design.md, "Leaderless schedulers"): it reads and changes
the scheduler's membership, ledger, heap and claims, and fires through Scheduler.fire.
"""

from __future__ import annotations

import heapq
import logging
from typing import TYPE_CHECKING

from zcron import protocol
from zcron.job import Job

if TYPE_CHECKING:
    from zcron.scheduler import Scheduler

log = logging.getLogger("zcron.scheduler")
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
MAX_CATCH_UP = 10_000  # ticks of one job fired by one catch-up, at most


class Takeover:
    """Peer messages and the view changes they cause."""

    def heartbeat_if_due(self: Scheduler, now: float, now_mono: float) -> None:
        if now_mono < self.next_heartbeat:
            return
        self.next_heartbeat = now_mono + self.config.cluster.heartbeat
        was_eligible = self.members.self_eligible
        self.members.check_clock(self.config.cluster.max_clock_skew, now_mono)
        if was_eligible != self.members.self_eligible:
            log.warning(
                "scheduler %s %s",
                self.id,
                self.members.self_reason or "clock back within bounds: firing again",
            )
            self.view_changed(now, now_mono, "own clock check")
        self.send_heartbeat(now)

    def leave(self: Scheduler) -> None:
        """On a clean stop, say so: peers take our jobs at once instead of after peer_timeout."""
        self.members.self_eligible, self.members.self_reason = False, "stopping"
        self.send_heartbeat(self.clock.now())
        self.clock.sleep(0.05)  # linger 0 would drop it: give the I/O thread a moment to send

    def send_heartbeat(self: Scheduler, now: float) -> None:
        self.mesh.broadcast(
            "heartbeat", scheduler=self.id, since=self.members.since, sent=now,
            digest=self.members.my_digest, eligible=self.members.self_eligible,
            reason=self.members.self_reason,
        )  # fmt: skip

    def on_heartbeat(self: Scheduler, identity: bytes, msg: dict) -> None:
        now, now_mono = self.clock.now(), self.clock.monotonic()
        if self.members.heard(msg, now_mono, now):
            log.info("peer %s is live (firing from %.3f)", msg["scheduler"], msg["since"])
            if msg["since"] > now:
                heapq.heappush(self.views_at, msg["since"])
            self.view_changed(now, now_mono, f"peer {msg['scheduler']} joined")
        if msg["scheduler"] in self.members.needs_names(now_mono):
            self.mesh.send(msg["scheduler"], "jobset_request", scheduler=self.id)

    def expire_peers(self: Scheduler, now: float, now_mono: float) -> None:
        dead = self.members.expire(now_mono, self.last_expire_check)
        self.last_expire_check = now_mono
        if dead:
            log.warning(
                "peers %s silent for %.1fs: taking over their jobs",
                ", ".join(dead),
                self.config.cluster.peer_timeout,
            )
            self.view_changed(now, now_mono, f"peers {', '.join(dead)} dead")

    def change_view_if_due(self: Scheduler, now: float, now_mono: float) -> None:
        """A peer's (or our own) `since` has come: ownership moves at that instant."""
        if self.views_at and self.views_at[0] <= now:
            while self.views_at and self.views_at[0] <= now:
                heapq.heappop(self.views_at)
            self.view_changed(now, now_mono, "a scheduler started firing")

    def view_changed(self: Scheduler, now: float, now_mono: float, why: str) -> None:
        """Fire every unfired tick of the jobs we own now (per catch_up, within the grace)."""
        fired = sum(self.catch_up(job, now, now_mono) for job in self.jobs.values())
        self.record_claims()
        if fired:
            self.counters["takeovers"] += 1
            log.warning("%s: fired %d unfired ticks", why, fired)

    def catch_up(
        self: Scheduler,
        job: Job,
        now: float,
        now_mono: float,
        before: float = float("inf"),
        as_of: float | None = None,
    ) -> int:
        """Fire the job's unfired ticks before `before` that are ours; how many.

        Run before firing any tick of the job too, so its ticks always fire in order and
        the ledger's newest tick never hides an older unfired one.
        """
        last = self.ledger.last(job.name)
        if last is not None:
            handled = max(last, self.queued.get(job.name, last))  # fired, or waiting here
            if (job.next_after(handled) or before) >= before:
                return 0  # the steady state: nothing between the last fire and this tick
        fired = 0
        for tick in self.unfired_ticks(job, now):
            if tick < before and self.may_fire(job, tick, now_mono, as_of or now):
                self.fire(job, tick)
                fired += 1
        self.counters["caught_up"] += fired
        return fired

    def unfired_ticks(self: Scheduler, job: Job, now: float) -> list[float]:
        """Ticks after the last known fire that our heap has passed, bounded by the grace."""
        last = self.ledger.last(job.name)
        horizon = self.next_instant.get(job.name)
        if last is None or horizon is None or not job.enabled:
            return []
        start = max(last, self.queued.get(job.name, last), now - job.misfire_grace)
        ticks: list[float] = []
        tick = job.next_after(start)
        while tick is not None and tick < horizon and len(ticks) < MAX_CATCH_UP:
            ticks.append(tick)
            tick = job.next_after(tick)
        late = [t for t in ticks if t <= now]
        keep = {"none": [], "last": late[-1:], "all": late}[job.catch_up]
        return keep + [t for t in ticks if t > now]

    def on_claims(self: Scheduler, identity: bytes, msg: dict) -> None:
        self.note_fired(msg["ticks"])

    def on_accepted(self: Scheduler, identity: bytes, msg: dict) -> None:
        self.note_fired(msg["ticks"])

    def note_fired(self: Scheduler, ticks: list[list]) -> None:
        for job, tick in ticks:
            if job in self.jobs:
                self.ledger.note(job, float(tick))

    def on_jobset_request(self: Scheduler, identity: bytes, msg: dict) -> None:
        names = sorted(self.jobs)
        size = protocol.NAMES_PER_PART
        parts = max(1, -(-len(names) // size))
        for part in range(parts):
            self.mesh.send(msg["scheduler"], "jobset", scheduler=self.id,
                           digest=self.members.my_digest, part=part, parts=parts,
                           names=names[part * size:(part + 1) * size])  # fmt: skip

    def on_jobset(self: Scheduler, identity: bytes, msg: dict) -> None:
        if self.members.note_names(msg):
            log.warning(
                "scheduler %s has a different job set (digest %s, ours %s)",
                msg["scheduler"],
                msg["digest"],
                self.members.my_digest,
            )
            self.view_changed(self.clock.now(), self.clock.monotonic(), "job sets compared")

    def warm_up(self: Scheduler) -> float:
        """How long after start we begin firing: every live peer has heard us (and we them)
        before it dispatches, up to MAX_LEAD_S ahead, a tick that becomes ours."""
        cluster = self.config.cluster
        if len(cluster.schedulers) == 1:
            return 0.0
        return cluster.peer_timeout + 2 * cluster.heartbeat + MAX_LEAD_S
