"""Scheduler: a heap of next fire instants, rendezvous ownership, claims, takeover catch-up.

No per-second scan of all jobs: each fired tick pushes that job's next instant onto the
heap, so the loop's cost follows the ticks that are due, and idle means a long poll.
Every scheduler walks every job's ticks but fires only those it owns (ring.owner_of over
the peers eligible for that tick). A fired tick is announced to the peers (a claim) and
reported by the worker that took it; a tick that neither says fired is *unfired*. When the
view of the peers changes, the new owner of a job fires its unfired ticks (per catch_up,
within misfire_grace): a killed peer costs lateness, never a missed tick.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import zmq

from zcron import protocol
from zcron.auth import Security
from zcron.clock import SPIN_S, Clock
from zcron.coalesce import Coalescer
from zcron.config import Config, check_secure, load_daemon_config
from zcron.control import ClientRequests, job_message_defaults
from zcron.daemon import Notifier, Rejects, Signals, run_daemon
from zcron.errors import ProtocolError
from zcron.fence import Stalled, ahead_bound_s, stall_bound_s
from zcron.followups import FollowUp, Outcome, hook_message
from zcron.job import Job
from zcron.ledger import TickLedger
from zcron.log import iso_utc, setup_logging
from zcron.mesh import PeerMesh
from zcron.net import bind, incarnation, make_socket, send_nowait
from zcron.pauses import Pauses, PauseSync
from zcron.peers import Membership
from zcron.pending import Pending
from zcron.plan import Due, Plan
from zcron.prefetch import Recalls
from zcron.protocol import run_record
from zcron.roles import ANYONE, Roles, Sender
from zcron.schedule import ScheduleDir, to_wire
from zcron.slots import WorkerSlots, WorkerTable
from zcron.spool import Spool
from zcron.statedir import hold
from zcron.takeover import Takeover
from zcron.watch import POLL_INTERVAL_S, DirectoryWatch

log = logging.getLogger(__name__)
REPORT_EVERY_S = 2.0
RELOAD_SETTLE_S = 0.05  # let an editor finish writing before re-reading


PARKED_MARGIN_S = 0.05  # transit of a last `ready`, and loop jitter


@dataclass
class Undecided:
    """Parked runs of a worker that fell silent, until peers say whether they hear it."""

    at: float  # monotonic: when to decide
    worker: str
    runs: list[dict]


@dataclass
class Waiting:
    """A due tick that found no free slot in its pool."""

    msg: dict
    give_up_at: float  # wall clock: the tick plus the job's misfire_grace
    claim: bool
    superseded: bool = False  # a newer tick of the job came: this one is recorded missed
    out: bool = False  # left the queue: dispatched, or expired

    def still_waiting(self) -> bool:
        return not (self.superseded or self.out)


class Scheduler:
    """run() → poll() → handle_* per ready socket → fire_due_ticks(now) → timed steps.

    Composed of its parts: the plan (jobs and their heap), the membership, the ledger,
    the takeover (peer protocol and catch-up) and the client requests."""

    def __init__(self, config: Config, clock: Clock | None = None):
        self.config = config
        self.clock = clock or Clock()
        cluster = config.cluster
        self.id = config.scheduler.id
        self.address = config.scheduler_address()
        self.signals = Signals()
        self.notifier = Notifier()
        self.schedules = ScheduleDir(config.scheduler.schedules)
        self.watch = DirectoryWatch(config.scheduler.schedules)
        self.plan = Plan()
        self.waiting: dict[str, deque[Waiting]] = {}
        # job -> its newest tick waiting for a slot; older ones dropped at its instant
        self.coalesce: Coalescer[Waiting] = Coalescer(Waiting.still_waiting)
        self.workers = WorkerTable(cluster.peer_timeout)
        self.recalls = Recalls()  # queued runs asked back from busy workers (prefetch.py)
        self.spool = Spool(f"{config.scheduler.state}/spool")
        self.ledger = TickLedger(f"{config.scheduler.state}/ledger")
        self.pauses = Pauses(self.ledger.pauses(), self.ledger.save_pauses)
        self.members = Membership(
            self.id, list(cluster.schedulers), cluster.peer_timeout, since=float("inf"),
            heartbeat=cluster.heartbeat,
        )
        self.undecided: list[Undecided] = []  # parked runs of silent workers, decided later
        self.silent_runs: dict[str, tuple[str, str, float]] = {}  # run -> job, worker, until
        self.ctx = zmq.Context.instance()
        self.poller = zmq.Poller()
        self.errors: list = []
        self.reload_at: float | None = None
        self.next_report = self.next_poll_dir = 0.0
        self.next_job_table = 0.0
        self.counters = dict.fromkeys(("rejected", "takeovers", "caught_up", "missed", "retries",
                                       "skipped", "replaced"), 0)  # fmt: skip
        # retries, chained children, failure hooks: known to every scheduler (pending.py)
        self.roles = Roles(config.cluster.schedulers, config.clients)
        self.sender: Sender = ANYONE  # the key behind the message being handled
        self.rejects = Rejects(self.clock.monotonic, self.count_reject)
        self.pending = Pending(f"{config.scheduler.state}/pending", self.counters,
                               (config.sink.retention, ahead_bound_s(cluster)),
                               self.rejects)  # fmt: skip
        self.misses = Rejects(self.clock.monotonic)  # missed ticks: logged once per interval
        self.stall_bound = stall_bound_s(cluster)
        self.awake_since = self.clock.monotonic()
        # CURVE when [cluster] keys is set; failed handshakes land in counters (status --json).
        self.security = Security.from_config(cluster, self.id, self.counters)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Install signal handlers, bind and connect, load the schedules, tell systemd."""
        self.signals.install()
        self.bind()
        self.takeover = Takeover(self.config, self.clock, self.members, self.ledger, self.plan,
                                 self.mesh, self.counters, self.fire, self.rejects)  # fmt: skip
        self.pause_sync = PauseSync(self.id, self.pauses, self.mesh, self.clock,
                                    ahead_bound_s(self.config.cluster), self.rejects,
                                    self.job_table_now)  # fmt: skip
        self.takeover.on_rejoin = self.drop_waiting_ticks
        self.takeover.heartbeat_fields = lambda: {
            **self.pause_sync.heartbeat_fields(), "workers": self.workers.live_ids()}
        self.requests = ClientRequests(self.id, self.clock, self.plan, self.ledger,
                                       self.job_message, self.fire_message, self.status,
                                       self.reply, self.roles, lambda: self.sender,
                                       self.cancel_run, self.pause_sync)  # fmt: skip
        self.handlers = self.message_handlers()
        self.reload(self.clock.now())
        for name, msg in self.ledger.pushes().items():
            self.plan.plan_push(name, msg)
        self.takeover.start_firing(self.clock.now())
        self.notifier.ready(self.status_line())
        log.info(
            "scheduler %s on %s: %d jobs from %s; firing from %s",
            self.id,
            self.address,
            len(self.plan.jobs),
            self.config.scheduler.schedules,
            iso_utc(self.members.since),
        )

    def message_handlers(self) -> dict[str, Callable[[bytes, dict], None]]:
        """Every message kind the ROUTER accepts -> its handler (identity, msg)."""
        takeover = self.takeover
        return {
            "ready": self.on_ready, "finished": self.on_finished, "returned": self.on_returned,
            "started": self.on_started,
            "request": self.requests.on_request, "heartbeat": self.on_heartbeat,
            "claims": takeover.on_fired, "accepted": self.on_accepted,
            "outcomes": lambda identity, msg: self.pending.on_outcomes(msg, self.clock.now()),
            "jobset_request": takeover.on_jobset_request, "jobset": takeover.on_jobset,
            "pauses": self.pause_sync.on_pauses, "pauses_request": self.pause_sync.on_request,
        }  # fmt: skip

    def on_heartbeat(self, identity: bytes, msg: dict) -> None:
        """Liveness and view (takeover.py), then the pauses' digest (pauses.py)."""
        self.takeover.on_heartbeat(identity, msg)
        self.pause_sync.on_heartbeat(msg)

    def bind(self) -> None:
        cluster = self.config.cluster
        self.router = make_socket(self.ctx, zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer or worker reconnects
        self.security.server(self.router)
        bind(self.router, self.address, cluster.insecure, cluster.keys)
        self.sink = make_socket(self.ctx, zmq.DEALER, identity=incarnation(f"scheduler-{self.id}"))
        self.security.connect(self.sink, "sink", cluster.sink)
        self.mesh = PeerMesh(self.ctx, self.id, cluster.schedulers, self.security, cluster)
        for sock in (self.router, self.sink, self.signals.fd):
            self.poller.register(sock, zmq.POLLIN)
        if self.watch.fd is not None:
            self.poller.register(self.watch.fd, zmq.POLLIN)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit code."""
        while not self.signals.stopping:
            timeout_ms = self.timeout_ms()
            slept_at = self.clock.monotonic()
            ready = dict(self.poller.poll(timeout_ms))
            self.awake_since = now_mono = self.clock.monotonic()
            try:
                if now_mono - (slept_at + timeout_ms / 1000) > self.stall_bound:
                    raise Stalled(slept_at)  # stopped (or starved) in poll
                self.handle_events(ready)
                self.step(self.clock.now(), now_mono)
            except Stalled as stall:
                self.fence(stall.since)
            self.notifier.watchdog_if_due(self.clock.monotonic())
        return 0

    def check_awake(self) -> None:
        """Raise Stalled when this turn of the loop has lasted past the stall bound: what
        it was about to send may have been done by a peer meanwhile (fence.py)."""
        if self.clock.monotonic() - self.awake_since > self.stall_bound:
            raise Stalled(self.awake_since)

    def fence(self, last_awake: float) -> None:
        """After a stall: read what the sockets hold (peers' heartbeats and claims, workers'
        slots), give peers and workers a fresh peer_timeout to speak, re-plan every job from
        now, and rejoin as a new incarnation: peers own the ticks until our warm-up ends."""
        now_mono = self.clock.monotonic()
        self.counters["stalls"] = self.counters.get("stalls", 0) + 1
        stalled_s = now_mono - last_awake
        log.warning("scheduler %s stalled for %.1fs (bound %.2fs): fencing, then rejoining "
                    "as a new incarnation", self.id, stalled_s, self.stall_bound)  # fmt: skip
        # First out of the view we had (a new incarnation, nothing of ours waiting), so
        # that nothing read in the drain below fires on it; then read what queued up.
        now = self.clock.now()
        self.members.refresh(last_awake, now_mono)
        self.workers.refresh(last_awake, now_mono)
        self.takeover.last_expire_check = now_mono
        self.takeover.quorum_lost_at = None  # rejoining now in any case
        self.drop_waiting_ticks(f"this scheduler stalled for {stalled_s:.1f}s")
        self.takeover.start_firing(now)
        self.awake_since = now_mono  # dispatches in the drain are on the new incarnation
        drain_until = now_mono + 2 * self.config.cluster.heartbeat
        while (left := drain_until - self.clock.monotonic()) > 0:
            if self.router.poll(max(1, int(left * 1000))):
                self.handle_router()
        now = self.clock.now()
        self.takeover.next_heartbeat = 0.0
        for job in self.plan.jobs.values():
            self.plan.plan(job, job.next_after(now) if job.enabled else None)
        self.awake_since = self.clock.monotonic()

    def close(self) -> None:
        """Say we leave (peers take our jobs at once), then close the ledger and sockets."""
        self.notifier.stopping()
        if hasattr(self, "takeover"):
            self.takeover.leave()
            self.spool.send_new(self.sink, self.clock.monotonic())
            self.mesh.close()
            self.router.close(linger=0)
            self.sink.close(linger=0)
        self.ledger.close()
        self.pending.close()
        self.security.close()
        log.info("scheduler %s stopped", self.id)

    def status_line(self) -> str:
        return f"{len(self.plan.jobs)} jobs, {len(self.errors)} schedule errors"

    def step(self, now: float, now_mono: float) -> None:
        """Everything that is due at `now`, in order."""
        self.takeover.expire_peers(now, now_mono)
        self.takeover.change_view_if_due(now, now_mono)
        self.fire_due_ticks(now, now_mono)
        self.fire_followups(now, now_mono)
        self.takeover.record_claims()
        self.supersede_due(now)
        self.expire_waiting(now)
        self.expire_workers(now_mono)
        self.decide_parked_if_due(now_mono)
        self.takeover.heartbeat_if_due(now, now_mono)
        self.security.redial_failed(now_mono)
        self.reload_if_due(now)
        # the turn's records (hundreds of `missed` a second at overload) in as few messages
        # as fit; before the report, whose resends would take them as never sent
        self.spool.send_new(self.sink, now_mono)
        self.report_if_due(now)
        self.ledger.flush_if_due(now_mono)

    def timeout_ms(self) -> int:
        """Milliseconds until the next thing to do, waking just before a tick instant."""
        return self.clock.timeout_ms(self.wall_deadlines(), self.mono_deadlines())

    def mono_deadlines(self) -> list[float]:
        """What is due on the monotonic clock: heartbeats, peer expiry, the watchdog."""
        now_mono = self.clock.monotonic()
        deadlines = [self.takeover.next_heartbeat, now_mono + 60]
        deadlines.append(self.notifier.watchdog_due(now_mono))
        expiry = self.members.next_expiry(now_mono)
        if expiry is not None:
            deadlines.append(expiry + 0.001)
        return deadlines

    def wall_deadlines(self) -> list[float]:
        """What is due on the wall clock: ticks, view changes, reports, reloads, waits."""
        next_due = self.plan.next_due()
        optional = [self.takeover.next_view_change(), self.reload_at,
                    self.coalesce.next_deadline()]
        deadlines = [self.next_report, *(d for d in optional if d is not None)]
        if next_due is not None:
            deadlines.append(next_due - SPIN_S)
        if self.watch.fd is None:
            deadlines.append(self.next_poll_dir)
        if self.waiting:
            deadlines.append(min(q[0].give_up_at for q in self.waiting.values()))
        if (followup_at := self.pending.next_at(self.clock.now(), REPORT_EVERY_S)) is not None:
            deadlines.append(followup_at)
        return deadlines

    def handle_events(self, ready: dict) -> None:
        if self.signals.fd in ready:
            self.signals.drain()
            if self.signals.reload:
                self.signals.reload = False
                log.info("SIGHUP: re-reading %s", self.config.scheduler.schedules)
                self.notifier.reloading()
                self.reload(self.clock.now())
                self.notifier.ready(self.status_line())
        if self.watch.fd is not None and self.watch.fd in ready and self.watch.changed():
            self.reload_at = self.clock.now() + RELOAD_SETTLE_S
        if self.router in ready:
            self.handle_router()
        if self.sink in ready:
            self.handle_sink()

    # -- schedules ----------------------------------------------------------------------

    def reload_if_due(self, now: float) -> None:
        if self.watch.fd is None and now >= self.next_poll_dir:
            self.next_poll_dir = now + POLL_INTERVAL_S
            if self.watch.changed():
                self.reload_at = now
                if self.watch.fd is not None:
                    self.poller.register(self.watch.fd, zmq.POLLIN)
        if self.reload_at is not None and now >= self.reload_at:
            self.reload_at = None
            self.reload(now)

    def reload(self, now: float) -> None:
        """Re-read the schedule files; changed and new jobs get a fresh next instant."""
        result = self.schedules.load()
        self.errors = result.errors
        for message in result.appeared:  # each error once, when it appears
            log.error("%s", message)
        # Jobs share few schedules: each schedule's next instant is found once.
        next_after_now = cache(lambda cron: cron.next_after(now))
        for name, job in result.jobs.items():
            if self.plan.jobs.get(name) != job:
                self.plan.plan(job, next_after_now(job.cron) if job.enabled else None)
        self.plan.replace_jobs(result.jobs)
        self.pending.set_jobs(self.plan.jobs)
        self.ledger.forget(set(result.jobs))
        new_digest = result.digest
        if new_digest != self.members.my_digest:
            log.info("%d jobs loaded, digest %s", len(result.jobs), new_digest)
            self.members.my_digest = new_digest
            self.takeover.next_heartbeat = 0.0
        self.next_report = self.next_job_table = now
        self.notifier.status(self.status_line())  # also after a change seen without SIGHUP

    # -- firing -------------------------------------------------------------------------

    def fire_due_ticks(self, now: float, now_mono: float) -> None:
        """Walk every tick whose dispatch time has come; fire the ones that are ours."""
        while (entry := self.plan.pop_due(now + SPIN_S)) is not None:
            if entry.dispatch_at >= entry.tick:  # due at its instant: not a moment before
                self.clock.spin_until(entry.dispatch_at)
            # else the worker parks it until its instant: up to SPIN_S early is no matter
            # (spinning to each of 100 jobs' staggered instants cost 3% of a core)
            pushed = self.plan.take_push(entry)
            if pushed is not None:
                self.fire_message(pushed, entry.tick, claim=False)
                self.ledger.drop_push(entry.job)
            elif (job := self.plan.current(entry)) is not None:
                self.fire_tick(job, entry, max(now, entry.dispatch_at), now_mono)

    def fire_tick(self, job: Job, entry: Due, now: float, now_mono: float) -> None:
        """Fire the entry's tick if it is ours (older unfired ones first); plan the next."""
        tick = entry.tick
        if self.takeover.may_fire(job, tick, now_mono):
            self.takeover.catch_up(job, now, now_mono, before=tick, as_of=tick)
            self.fire(job, tick)
        self.plan.push(job, job.next_after(tick), entry.generation)

    def fire(self, job: Job, tick: float, attempt: int = 1) -> None:
        if job.quorum and attempt == 1 and self.fenced_quorum_tick(job, tick):
            return
        if attempt == 1 and self.pauses.is_paused(job.name):
            return self.skip_paused(job, tick)
        if job.overlap != "allow" and self.overlaps(job, tick):
            return
        msg = self.job_message(job, tick, attempt)
        self.fire_message(msg, tick, job.misfire_grace, claim=attempt == 1)

    def fenced_quorum_tick(self, job: Job, tick: float) -> bool:
        """Spec §8.12: a tick of a quorum job that a peer we lost may have sent is recorded
        `missed` (the worker's record replaces it if it did run), never fired a second time."""
        now, now_mono = self.clock.now(), self.clock.monotonic()
        peer = self.takeover.maybe_fired_by(job, tick, now, now_mono)
        if peer is None:
            return False
        self.counters["quorum_fenced"] = self.counters.get("quorum_fenced", 0) + 1
        self.count_missed(self.job_message(job, tick, 1), f"quorum job: its owner {peer} was "
                          "lost and may have fired it (at most once)", guess=True)  # fmt: skip
        self.takeover.claim(job.name, tick)
        return True

    def skip_paused(self, job: Job, tick: float) -> None:
        """A paused job's tick, ours to fire (scheduled or caught up): recorded `skipped`
        with the reason, once, by its owner; claimed, so nobody fires it after a resume."""
        entry = self.pauses.entries[job.name]
        why = f"paused by zcron pause at {iso_utc(entry.stamp)} (client {entry.by})"
        self.counters["paused_ticks"] = self.counters.get("paused_ticks", 0) + 1
        self.record(run_record(self.job_message(job, tick, 1), None, status="skipped",
                               stderr_tail=why))  # fmt: skip
        self.takeover.claim(job.name, tick)

    def job_table_now(self) -> None:
        """Send the job table at the next report (a pause changed it), not in 2 s."""
        self.next_report = self.next_job_table = 0.0

    def fire_message(self, msg: dict, tick: float, grace: float = 60.0, claim: bool = True) -> None:
        """Dispatch now, or queue the tick for a free slot until tick + grace."""
        if not self.dispatch(msg, claim):
            queue = self.waiting.setdefault(msg["pool"], deque())
            waiting = Waiting(msg, tick + grace, claim)
            queue.append(waiting)
            if claim:  # ours, in hand: catch-up must not fire it again while it waits
                queued = self.plan.queued
                queued[msg["job"]] = max(tick, queued.get(msg["job"], tick))
                self.keep_newest_waiting(waiting)

    def keep_newest_waiting(self, newest: Waiting) -> None:
        """Spec §8.13: each job keeps at most one due tick waiting for a slot, the newest;
        the older one is recorded `missed` when the newer one's instant comes (coalesce.py)."""
        msg = newest.msg
        instant = msg["tick"] + (msg.get("delay") or 0.0)
        for older, tick in self.coalesce.add(msg["job"], newest, msg["tick"], instant,
                                             self.clock.now()):  # fmt: skip
            self.supersede(older, tick)

    def supersede_due(self, now: float) -> None:
        for older, tick in self.coalesce.due(now):
            self.supersede(older, tick)

    def supersede(self, older: Waiting, tick: float) -> None:
        older.superseded = True
        self.count_missed(older.msg, f"tick {tick:.3f} came before a slot did "
                          "(at most one tick of a job waits)")  # fmt: skip

    def count_missed(self, msg: dict, why: str, guess: bool = False) -> None:
        """Record a tick `missed`; a guess (a peer may have run it) sets off no follow-up."""
        self.counters["missed"] += 1
        self.misses(f"tick {msg['tick']:.3f} of {msg['job']} missed: {why}")
        self.record(run_record(msg, None, status="missed", stderr_tail=why), outcome=not guess)

    def job_message(self, job: Job, tick: float, attempt: int) -> dict:
        return {
            **job_message_defaults(self.id),
            "job": job.name, "tick": tick, "attempt": attempt, "pool": job.pool,
            "command": job.command if isinstance(job.command, str) else list(job.command),
            "shell": job.shell, "user": job.user, "env": dict(job.env), "cwd": job.cwd,
            "timeout": job.timeout, "on_timeout": job.on_timeout, "memory_max": job.memory_max,
            "delay": job.delay_s, **({"mailto": job.mailto} if job.mailto else {}),
        }  # fmt: skip

    def dispatch(self, msg: dict, claim: bool, avoid: str | None = None) -> bool:
        """Send the job to the pool's freest worker, then claim the tick; False if no slot."""
        worker = self.workers.pick(msg["pool"], avoid)
        if worker is None:
            return False
        self.check_awake()  # never send on a view a stall made stale
        msg["dispatched"] = self.clock.now()
        self.router.send_multipart([worker.identity, protocol.encode("job", **msg)])
        worker.assign(msg)
        if claim:  # after the send: a claim for a tick no worker got would lose it
            self.takeover.claim(msg["job"], msg["tick"])
        return True

    def overlaps(self, job: Job, tick: float) -> bool:
        """Apply overlap = forbid (record the tick `skipped`) or replace (cancel the old
        run); True when the tick must not run. Runs this scheduler dispatched count."""
        active = self.workers.active(job.name)
        silent = self.silent_run(job.name) if not active else None
        if not active and silent is None:
            return False
        if job.overlap == "forbid" or silent is not None:
            why = (f"overlap = {job.overlap}: run {active[0][1]['run_id']} is still running"
                   if active else silent)  # fmt: skip
            self.counters["skipped"] += 1
            self.record(run_record(self.job_message(job, tick, 1), None, status="skipped",
                                   stderr_tail=why))  # fmt: skip
            self.takeover.claim(job.name, tick)
            return True
        for worker, running in active:
            self.counters["replaced"] += 1
            reason = f"overlap = replace: replaced by tick {tick:.3f}"
            self.router.send_multipart([worker.identity, protocol.encode(
                "cancel", run_id=running["run_id"], reason=reason)])  # fmt: skip
        return False

    def silent_run(self, job: str) -> str | None:
        """Why a tick of this overlap = forbid/replace job must wait: its run was on a worker
        that fell silent (stopped, cut off) and may still be running there, until that
        worker is heard again or the job's timeout (else misfire_grace) has passed."""
        now = self.clock.now()
        for run_id, (name, worker, until) in list(self.silent_runs.items()):
            if until <= now:
                del self.silent_runs[run_id]
            elif name == job:
                return (f"overlap: run {run_id} was on worker {worker}, which stopped "
                        "answering: it may still be running")  # fmt: skip
        return None

    def note_silent_runs(self, worker: WorkerSlots, runs: list[dict]) -> None:
        for msg in runs:
            job = self.plan.jobs.get(msg["job"])
            if job is not None and job.overlap != "allow":
                hold = job.timeout if job.timeout is not None else job.misfire_grace
                self.silent_runs[msg["run_id"]] = (job.name, worker.id, self.clock.now() + hold)

    def dispatch_waiting(self) -> None:
        for pool, queue in list(self.waiting.items()):
            while queue and (queue[0].superseded or self.dispatch(queue[0].msg, queue[0].claim)):
                self.forget_waiting(queue.popleft())
            if not queue:
                del self.waiting[pool]

    def forget_waiting(self, waiting: Waiting) -> None:
        waiting.out = True
        self.coalesce.forget(waiting.msg["job"], waiting)

    def drop_waiting_ticks(self, why: str) -> None:
        """Ticks fired on a view we are leaving (a stall, a cut) that still wait for a slot:
        the peers that took them over fired them meanwhile; dispatching them now would run
        them a second time (seen at the heal of a cut). Recorded `missed` (a run of the tick
        elsewhere makes that guess moot at the sink). Retries and pushes keep waiting."""
        for queue in self.waiting.values():
            for waiting in queue:
                if waiting.claim and not waiting.superseded:
                    waiting.superseded = True
                    self.forget_waiting(waiting)
                    self.count_missed(waiting.msg, f"{why}: its peers own this tick", guess=True)

    def expire_waiting(self, now: float) -> None:
        """Ticks that waited past their misfire_grace for a slot are recorded `missed`."""
        for pool, queue in list(self.waiting.items()):
            while queue and (queue[0].superseded or queue[0].give_up_at <= now):
                waiting = queue.popleft()
                self.forget_waiting(waiting)
                if not waiting.superseded:
                    self.count_missed(waiting.msg, f"no free slot in pool {pool!r}")
            if not queue:
                del self.waiting[pool]

    # -- workers ------------------------------------------------------------------------

    def handle_router(self) -> None:
        """The one choke point for ROUTER messages: decode and validate, then dispatch by
        kind through self.handlers (a per-message authorization check belongs here)."""
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.requests.commit()  # the turn's pushes in one transaction, then replies
                return
            try:
                if len(frames) != 2:
                    raise ProtocolError("malformed", f"{len(frames)} frames")
                kind, msg = protocol.decode(frames[1].bytes)
                handler = self.handlers.get(kind)
                if handler is None:
                    raise ProtocolError("unexpected_type", kind)
                # Every message is authorized here, before any handler acts on it: its key
                # must hold the role the type needs and be the id the message claims.
                self.sender = self.roles.sender(self.security.sender(frames[1]))
                self.roles.check(kind, msg, self.sender)
            except ProtocolError as exc:
                self.rejects(f"dropped message: {exc}")
                continue
            handler(frames[0].bytes, msg)

    def count_reject(self, reason: str) -> None:
        self.counters["rejected"] += 1

    def reply(self, identity: bytes, frame: bytes) -> None:
        self.router.send_multipart([identity, frame])

    def on_ready(self, identity: bytes, msg: dict) -> None:
        if not self.own_routing_id(identity, msg, "ready"):
            return
        self.on_batched(identity, msg)
        now_mono = self.clock.monotonic()
        taken = self.workers.taken_by(identity, msg["worker"], now_mono)
        if taken is not None:
            self.refuse_worker(identity, msg["worker"], taken)
            return
        for lost in self.workers.announce(identity, msg, now_mono):
            self.run_lost(lost, f"worker {msg['worker']} restarted")
        self.hear_silent_worker(msg["worker"])
        self.dispatch_waiting()
        self.recall_queued(now_mono)

    def own_routing_id(self, identity: bytes, msg: dict, kind: str) -> bool:
        """The worker a message names is the one whose connection it came on."""
        if identity.startswith(msg["worker"].encode() + b"."):  # net.incarnation's form
            return True
        self.rejects(f"{kind} as worker {msg['worker']!r:.40} on another's routing "
                     f"id {identity[:60]!r}", "impersonation")  # fmt: skip
        return False

    def on_started(self, identity: bytes, msg: dict) -> None:
        """Runs queued at the worker's last `ready` have started: no longer ours to
        dispatch again should it die before its next `ready` (never_started)."""
        if self.own_routing_id(identity, msg, "started"):
            self.workers.started(identity, msg["run_ids"])

    def on_batched(self, identity: bytes, msg: dict) -> None:
        """What a `ready` carries of the worker's turn, as if sent apart before it: the
        ticks it `accepted` first (an end counts only for a run it said it took, and a
        quick run is taken and ends in one turn), then the `finished` of its runs (ours
        free their slots; all set off follow-ups)."""
        if msg.get("ticks"):
            self.on_accepted(identity, {"worker": msg["worker"], "ticks": msg["ticks"],
                                        "runs": msg.get("runs", [])})  # fmt: skip
        for run_id, job, status, tick, attempt, exit_code, ended in msg.get("ended", ()):
            self.on_finished(identity, {"run_id": run_id, "job": job, "status": status,
                                        "tick": tick, "attempt": attempt,
                                        "exit_code": exit_code, "ended": ended})  # fmt: skip

    def recall_queued(self, now_mono: float) -> None:
        """Free slots while runs of ours wait in a busy worker's queue: ask them back."""
        for worker, run_id in self.recalls.due(self.workers.workers.values(), now_mono):
            self.counters["recalls"] = self.counters.get("recalls", 0) + 1
            self.router.send_multipart([worker.identity, protocol.encode("recall",
                                                                         run_id=run_id)])

    def on_returned(self, identity: bytes, msg: dict) -> None:
        """Queued runs a worker gives back (recalled, or it drains): they never started
        there, so they go to the freest worker again under their own run ids."""
        for run_id in msg["run_ids"]:
            self.recalls.answered(run_id)
            job_msg = self.workers.finished(identity, run_id)
            if job_msg is None:
                continue
            self.counters["returned"] = self.counters.get("returned", 0) + 1
            job = self.plan.jobs.get(job_msg["job"])
            grace = job.misfire_grace if job else 60.0
            if not self.dispatch(job_msg, claim=False):
                self.waiting.setdefault(job_msg["pool"], deque()).append(
                    Waiting(job_msg, job_msg["tick"] + grace, False))  # fmt: skip

    def hear_silent_worker(self, worker_id: str) -> None:
        """A worker heard again says itself what runs (its `ready`): no more guessing."""
        if self.silent_runs:
            for run_id, (_, worker, _) in list(self.silent_runs.items()):
                if worker == worker_id:
                    del self.silent_runs[run_id]

    def refuse_worker(self, identity: bytes, worker_id: str, live: bytes) -> None:
        """A second process announces a live worker's id: it gets no jobs and is told so;
        the first keeps working (spec §7, Identity)."""
        why = (f"worker id {worker_id!r} is in use by a live worker (connection "
               f"{live.decode(errors='replace')}); this one ({identity.decode(errors='replace')})"
               " is refused")  # fmt: skip
        self.counters["refused_workers"] = self.counters.get("refused_workers", 0) + 1
        self.rejects(why, "duplicate_worker")
        self.router.send_multipart([identity, protocol.encode("refused", reason=why)])

    def on_finished(self, identity: bytes, msg: dict) -> None:
        """A run ended (every worker tells every scheduler): free its slot if we sent it;
        decide its follow-ups in any case (pending.py)."""
        self.workers.finished(identity, msg["run_id"])
        worker = self.workers.workers.get(identity)
        if worker is not None:  # a worker that announced itself (its key checked: roles.py)
            self.pending.on_finished(msg, worker.id, self.clock.now())

    def on_accepted(self, identity: bytes, msg: dict) -> None:
        """A worker took these runs: the ticks fired (takeover.py), the follow-ups are done."""
        self.takeover.on_fired(identity, msg)
        self.pending.on_accepted(msg, self.clock.now())

    def fire_followups(self, now: float, now_mono: float) -> None:
        """Start the due follow-ups we own, then tell the peers (and what we recorded).

        Only next to a majority (any job, with more than one scheduler): a side cut off
        from it may lack the peers' word that a follow-up was started (2 retries of one
        run in a 75 s nemesis, before); and a scheduler that regains one next to a peer
        that kept it rejoins first (takeover.check_quorum), as for ticks."""
        self.takeover.check_quorum(now, now_mono)
        alone = len(self.config.cluster.schedulers) == 1

        def mine(job: Job, at: float) -> bool:
            return self.takeover.owner(job, at, now_mono, as_of=now) == self.id and (
                alone or self.takeover.sees_quorum(now_mono))

        self.pending.fire_due(now, mine, self.start_followup)
        for fields in self.pending.take_messages():
            self.mesh.broadcast("outcomes", scheduler=self.id, **fields)

    def start_followup(self, followup: FollowUp, job: Job) -> None:
        """A retry, a chained child's run, its `skipped` record, or a failure hook."""
        self.check_awake()  # never decide on a view a stall made stale (a `skipped` too)
        kind, tick, now = followup.kind, followup.tick, self.clock.now()
        msg = self.job_message(job, tick, followup.attempt)
        if kind == "skip":
            return self.record(run_record(msg, None, status="skipped",
                                          stderr_tail=followup.detail["why"]))  # fmt: skip
        if kind == "hook":
            msg = hook_message(msg, job, followup)
        if now > followup.at + job.misfire_grace:
            return self.count_missed(msg, f"{kind} due at {iso_utc(followup.at)} found no "
                                     "live owner within misfire_grace")  # fmt: skip
        if kind == "child":
            return self.fire(job, tick)
        self.counters["retries" if kind == "retry" else "hooks"] = (
            self.counters.get("retries" if kind == "retry" else "hooks", 0) + 1)
        avoid = followup.detail.get("avoid")
        if not self.dispatch(msg, claim=False, avoid=avoid):
            self.waiting.setdefault(msg["pool"], deque()).append(
                Waiting(msg, now + job.misfire_grace, False))

    def expire_workers(self, now_mono: float) -> None:
        for worker in self.workers.expire(now_mono):
            runs = worker.held
            # Its last sign of life, on the wall clock: a run whose instant comes more than a
            # heartbeat after it was still parked when the worker died (or fences it, if
            # it was only stalled): it never started, and may go to another worker.
            alive_until = self.clock.now() - (now_mono - worker.last_seen)
            alive_until += self.config.cluster.heartbeat + PARKED_MARGIN_S
            parked = [m for m in runs if self.never_started(worker, m, alive_until)]
            log.warning("worker %s silent for %.1fs: %d runs lost, %d parked runs to dispatch "
                        "again unless a peer still hears it", worker.id,
                        now_mono - worker.last_seen, len(runs) - len(parked),
                        len(parked))  # fmt: skip
            started = [m for m in runs if m not in parked]
            self.note_silent_runs(worker, started)
            for msg in started:
                self.run_lost(msg, f"worker {worker.id} stopped answering")
            if parked:
                # Peers' heartbeats say within two heartbeats whether they hear it still.
                decide_at = now_mono + 2 * self.config.cluster.heartbeat + PARKED_MARGIN_S
                self.undecided.append(Undecided(decide_at, worker.id, parked))

    def decide_parked_if_due(self, now_mono: float) -> None:
        """A silent worker's parked runs: dispatched again elsewhere when it is dead to the
        cluster (no live peer hears it, and we see a majority: a cut-off scheduler cannot
        tell), else left to it, recorded `lost` until its own record comes (a worker cut
        off from us alone runs them at their instant: dispatching again ran them twice)."""
        while self.undecided and self.undecided[0].at <= now_mono:
            item = self.undecided.pop(0)
            heard_by = self.members.hear_worker(item.worker, now_mono)
            if not heard_by and self.takeover.sees_quorum(now_mono):
                for msg in item.runs:
                    self.redispatch(msg, item.worker)
                continue
            why = (f"heard by {', '.join(heard_by)}" if heard_by
                   else "no majority here to tell a cut from a death")  # fmt: skip
            for msg in item.runs:
                self.run_lost(msg, f"worker {item.worker} stopped answering here ({why}): "
                              "it may run it at its instant")  # fmt: skip

    @staticmethod
    def never_started(worker: WorkerSlots, msg: dict, alive_until: float) -> bool:
        """In its prefetch queue when the worker was last heard (a queued job it starts is
        announced in the same turn of its loop), or parked (or never acknowledged) then
        with its instant after the worker's last possible moment of life."""
        if msg["run_id"] in worker.queued:
            return True
        parked = msg["run_id"] in worker.parked or msg["run_id"] not in worker.reported
        return parked and msg["tick"] + msg.get("delay", 0.0) > alive_until

    def redispatch(self, msg: dict, dead: str) -> None:
        """Dispatch a run that never started again, same attempt, as a run of its own (the
        dead worker's copy, if it was only stalled, is refused there: fence.py)."""
        self.counters["redispatched"] = self.counters.get("redispatched", 0) + 1
        again = {**msg, "run_id": uuid.uuid4().hex}
        job = self.plan.jobs.get(msg["job"])
        self.fire_message(again, msg["tick"], job.misfire_grace if job else 60.0, claim=False)
        log.info("run %s of %s was parked on worker %s: dispatched again as %s",
                 msg["run_id"], msg["job"], dead, again["run_id"])  # fmt: skip

    def run_lost(self, msg: dict, why: str) -> None:
        """Record a run whose worker vanished as `lost` (same run id); its retry, like any
        follow-up, comes from the record (record → pending.py)."""
        self.record(run_record(msg, None, status="lost", stderr_tail=why))

    # -- results and reports --------------------------------------------------------------

    def record(self, rec: dict, outcome: bool = True) -> None:
        """Spool a record this scheduler made (missed, lost, skipped), sent to the sink at
        the turn's end; an outcome (not a guess) sets off follow-ups here and at the peers."""
        self.spool.add(rec)
        if outcome:
            self.pending.note(Outcome.from_record(rec, self.clock.now()), ours=True)

    def send_job_table(self, report: dict, now: float) -> None:
        """The job table with next ticks, in parts; large tables less often (idle CPU)."""
        jobs = self.plan.jobs
        self.next_job_table = now + max(REPORT_EVERY_S, len(jobs) / 1000)
        paused = self.pauses.is_paused
        table = [dict(to_wire(job), next_tick=self.plan.next_instant.get(name),
                      paused=paused(name)) for name, job in jobs.items()]  # fmt: skip
        size = protocol.JOBS_PER_PART
        parts = max(1, -(-len(table) // size))
        for part in range(parts):
            send_nowait(self.sink, protocol.encode(
                "jobs", jobs=table[part * size:(part + 1) * size], part=part, parts=parts,
                **report))  # fmt: skip

    def stats(self) -> dict[str, float]:
        """What the sink exposes for this scheduler (zcron_scheduler_* metrics)."""
        now_mono = self.clock.monotonic()
        return {
            **self.counters,
            "waiting": sum(len(q) for q in self.waiting.values()),
            "spool": len(self.spool),
            "followups_pending": len(self.pending.items),
            "eligible": int(self.members.self_eligible),
            "digests_agree": int(self.members.digests_agree(now_mono)),
            "live_peers": len(self.members.live(now_mono)),
        }

    def cancel_run(
        self, run_id: str, may_cancel: Callable[[str | None, str], object]
    ) -> dict | None:
        """Cancel a run we know of: one waiting here for a slot (recorded `skipped`), or one
        a worker runs or holds parked, whoever dispatched it (the worker kills its group
        and records `killed`), or a delayed push (dropped, recorded `skipped`). None when we
        know no such run."""
        for name, msg in list(self.plan.pushed.items()):
            if msg["run_id"] == run_id:
                may_cancel(msg["user"], run_id)
                self.plan.drop_push(name)
                self.ledger.drop_push(name)
                self.record_cancelled(msg)
                return {"run_id": run_id, "job": name, "cancelled": "delayed push"}
        for queue in self.waiting.values():
            for waiting in queue:
                if waiting.msg["run_id"] == run_id and not waiting.superseded:
                    may_cancel(waiting.msg["user"], run_id)
                    waiting.superseded = True
                    self.record_cancelled(waiting.msg)
                    return {"run_id": run_id, "job": waiting.msg["job"], "cancelled": "waiting"}
        for worker, job, user in self.workers.holding(run_id):
            may_cancel(user if user is not None else self.job_user(job), run_id)
            self.router.send_multipart([worker.identity, protocol.encode(
                "cancel", run_id=run_id, reason="zcron cancel")])  # fmt: skip
            return {"run_id": run_id, "job": job, "cancelled": f"on worker {worker.id}"}
        return None

    def record_cancelled(self, msg: dict) -> None:
        self.record(
            run_record(msg, None, status="skipped", stderr_tail="cancelled by zcron cancel")
        )

    def job_user(self, job: str) -> str | None:
        known = self.plan.jobs.get(job)
        return known.user if known is not None else None

    def status(self) -> dict:
        """The reply to `zcron status`: this scheduler, its peers, pools and workers."""
        now, now_mono = self.clock.now(), self.clock.monotonic()
        members = self.members
        eligible = members.eligible_at(now, now_mono)
        owner = self.takeover.owner
        owned = sum(1 for job in self.plan.jobs.values() if owner(job, now, now_mono) == self.id)
        return {
            "scheduler": self.id, "jobs": len(self.plan.jobs), "owned": owned,
            "digest": members.my_digest, "since": members.since,
            "eligible": members.self_eligible, "reason": members.self_reason,
            "peers": {p.id: {"state": "live" if members.is_live(p, now_mono) else "dead",
                             "eligible": p.id in eligible, "digest": p.digest,
                             "clock_offset": p.clock_offset, "reason": p.reason}
                      for p in members.peers.values()},
            "pools": self.pool_view(),
            "workers": [{"id": w.id, "pools": w.pools, "slots": w.slots,
                         "free": max(0, w.credit), "running": len(w.running)}
                        for w in self.workers.workers.values()],
            "waiting": {pool: len(q) for pool, q in self.waiting.items()},
            "counters": dict(self.counters),
            "errors": [str(e) for e in self.errors],
            "paused": self.paused_view(),
        }  # fmt: skip

    def paused_view(self, limit: int = 1000) -> dict[str, dict]:
        """Paused jobs we define (the first `limit`), for `zcron status`: since when, by whom."""
        jobs = self.plan.jobs
        paused = sorted((job, e) for job, e in self.pauses.paused().items() if job in jobs)
        return {job: {"since": e.stamp, "by": e.by} for job, e in paused[:limit]}

    def pool_view(self) -> dict[str, dict[str, int]]:
        """Slots per pool, including pools our jobs name that no live worker serves."""
        pools = self.workers.pools()
        for job in self.plan.jobs.values():
            pools.setdefault(job.pool, {"workers": 0, "slots": 0, "free": 0})
        return pools

    def handle_sink(self) -> None:
        self.spool.take_acks(self.sink, self.rejects)

    def report_if_due(self, now: float) -> None:
        """Tell the sink our jobs and their next instants; re-send unacknowledged records."""
        if now < self.next_report:
            return
        self.next_report = now + REPORT_EVERY_S
        now_mono = self.clock.monotonic()
        report = {"scheduler": self.id, "sent": now, "stats": self.stats(),
                  "clock_offsets": {p.id: p.clock_offset for p in self.members.live(now_mono)
                                    if p.clock_offset is not None},
                  "errors": [str(e)[:1000] for e in self.errors[:100]],
                  "reason": self.members.self_reason}  # fmt: skip
        if now >= self.next_job_table:
            self.send_job_table(report, now)
        else:
            send_nowait(self.sink, protocol.encode("jobs", jobs=[], part=0, parts=0, **report))
        self.spool.send_turn(self.sink, self.spool.due(now_mono), now_mono)


def cmd_scheduler(args: dict) -> int:
    config = load_daemon_config(args)
    config = config.with_overrides("scheduler", id=args.get("--id"))
    config.scheduler_address()  # an unknown id is a configuration error, before anything binds
    setup_logging(f"zcron-scheduler[{config.scheduler.id}]")
    check_secure(config, f"scheduler {config.scheduler.id}")
    os.umask(0o077)  # ledger and spool owner-only (the scheduler starts no processes)
    sid = config.scheduler.id
    lock = hold(config.scheduler.state, f"scheduler {sid}", f"lock-{sid}")
    try:
        return run_daemon(Scheduler(config))
    finally:
        os.close(lock)
