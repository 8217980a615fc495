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

import heapq
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from functools import cache

import zmq

from zcron import protocol
from zcron.auth import Security
from zcron.clock import SPIN_S, Clock
from zcron.config import Config, load_daemon_config
from zcron.control import ClientRequests
from zcron.daemon import Notifier, Signals
from zcron.errors import ProtocolError
from zcron.job import Job
from zcron.ledger import TickLedger
from zcron.log import setup_logging
from zcron.mesh import PeerMesh
from zcron.net import bind, make_socket, send_nowait
from zcron.peers import Membership
from zcron.process import run_record
from zcron.ring import OwnerCache, has_quorum, owner_of
from zcron.schedule import ScheduleDir, to_wire
from zcron.slots import WorkerTable
from zcron.spool import Spool
from zcron.takeover import ARM_RATE_PER_S, LEAD_S, MAX_EXTRA_LEAD_S, Takeover
from zcron.watch import POLL_INTERVAL_S, DirectoryWatch

log = logging.getLogger(__name__)
REPORT_EVERY_S = 2.0
REJECT_LOG_EVERY_S = 10.0
RELOAD_SETTLE_S = 0.05  # let an editor finish writing before re-reading


@dataclass
class Waiting:
    """A due tick that found no free slot in its pool."""

    msg: dict
    give_up_at: float  # wall clock: the tick plus the job's misfire_grace
    claim: bool


class Scheduler(Takeover, ClientRequests):
    """run() → poll() → handle_* per ready socket → fire_due_ticks(now) → timed steps."""

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
        self.jobs: dict[str, Job] = {}
        self.generation: dict[str, int] = {}
        self.next_instant: dict[str, float] = {}
        self.due: list[tuple[float, float, int, str]] = []  # (dispatch at, tick, generation, job)
        self.due_at: dict[float, int] = {}  # instant -> entries on the heap for it (burst lead)
        self.waiting: dict[str, deque[Waiting]] = {}
        self.pushed: dict[str, dict] = {}  # one-off jobs from `zcron push`, by name
        self.workers = WorkerTable(cluster.peer_timeout)
        self.spool = Spool(f"{config.scheduler.state}/spool")
        self.ledger = TickLedger(f"{config.scheduler.state}/ledger")
        self.members = Membership(
            self.id, list(cluster.schedulers), cluster.peer_timeout, since=float("inf")
        )
        self.owners = OwnerCache()
        self.views_at: list[float] = []  # wall instants at which the view changes
        self.claims: list[list] = []
        self.queued: dict[str, float] = {}  # job -> newest tick waiting here for a slot
        self.retries: list[tuple[float, str, dict, str | None]] = []  # (at, run id, msg, avoid)
        self.ctx = zmq.Context.instance()
        self.poller = zmq.Poller()
        self.errors: list = []
        self.reload_at: float | None = None
        self.next_report = self.next_poll_dir = self.next_heartbeat = 0.0
        self.next_job_table = 0.0
        self.last_expire_check = self.clock.monotonic()
        self.next_reject_log = 0.0
        self.counters = dict.fromkeys(("rejected", "takeovers", "caught_up", "missed", "retries",
                                       "skipped", "replaced"), 0)  # fmt: skip
        self.handlers = {
            "ready": self.on_ready, "finished": self.on_finished, "request": self.on_request,
            "heartbeat": self.on_heartbeat, "claims": self.on_claims,
            "accepted": self.on_accepted, "jobset_request": self.on_jobset_request,
            "jobset": self.on_jobset,
        }  # fmt: skip

    # -- set-up -------------------------------------------------------------------------

    def bind(self) -> None:
        cluster = self.config.cluster
        # CURVE when [cluster] keys is set; failed handshakes land in counters (status --json).
        self.security = Security.from_config(cluster, self.id, self.counters)
        self.router = make_socket(self.ctx, zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer or worker reconnects
        self.security.server(self.router)
        bind(self.router, self.address, cluster.insecure, cluster.keys)
        self.sink = make_socket(self.ctx, zmq.DEALER, identity=f"scheduler-{self.id}")
        self.security.client(self.sink, "sink")
        self.sink.connect(cluster.sink)
        self.mesh = PeerMesh(self.ctx, self.id, cluster.schedulers, self.security)
        for sock in (self.router, self.sink, self.signals.fd):
            self.poller.register(sock, zmq.POLLIN)
        if self.watch.fd is not None:
            self.poller.register(self.watch.fd, zmq.POLLIN)

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
        self.bind()
        self.reload(self.clock.now())
        for name, msg in self.ledger.pushes().items():
            self.plan_push(name, msg)
        self.members.since = self.clock.now() + self.warm_up()
        heapq.heappush(self.views_at, self.members.since)
        self.notifier.ready(self.status_line())
        log.info(
            "scheduler %s on %s: %d jobs from %s; firing from %.3f",
            self.id,
            self.address,
            len(self.jobs),
            self.config.scheduler.schedules,
            self.members.since,
        )
        while not self.signals.stopping:
            ready = dict(self.poller.poll(self.timeout_ms()))
            self.handle_events(ready)
            now, now_mono = self.clock.now(), self.clock.monotonic()
            self.step(now, now_mono)
            self.notifier.watchdog_if_due(now_mono)
        self.notifier.stopping()
        self.leave()
        self.shutdown()
        return 0

    def status_line(self) -> str:
        return f"{len(self.jobs)} jobs, {len(self.errors)} schedule errors"

    def step(self, now: float, now_mono: float) -> None:
        """Everything that is due at `now`, in order."""
        self.expire_peers(now, now_mono)
        self.change_view_if_due(now, now_mono)
        self.fire_due_ticks(now, now_mono)
        self.retry_due(now)
        self.record_claims()
        self.expire_waiting(now)
        self.expire_workers(now_mono)
        self.heartbeat_if_due(now, now_mono)
        self.reload_if_due(now)
        self.report_if_due(now)
        self.ledger.flush_if_due(now_mono)

    def timeout_ms(self) -> int:
        """Milliseconds until the next thing to do, waking just before a tick instant."""
        return self.clock.timeout_ms(self.wall_deadlines(), self.mono_deadlines())

    def mono_deadlines(self) -> list[float]:
        """What is due on the monotonic clock: heartbeats, peer expiry, the watchdog."""
        now_mono = self.clock.monotonic()
        deadlines = [self.next_heartbeat, now_mono + 60]
        deadlines.append(self.notifier.watchdog_due(now_mono))
        expiry = self.members.next_expiry(now_mono)
        if expiry is not None:
            deadlines.append(expiry + 0.001)
        return deadlines

    def wall_deadlines(self) -> list[float]:
        """What is due on the wall clock: ticks, view changes, reports, reloads, waits."""
        deadlines = [self.next_report]
        if self.due:
            deadlines.append(self.due[0][0] - SPIN_S)
        if self.views_at:
            deadlines.append(self.views_at[0])
        if self.reload_at is not None:
            deadlines.append(self.reload_at)
        if self.watch.fd is None:
            deadlines.append(self.next_poll_dir)
        if self.waiting:
            deadlines.append(min(q[0].give_up_at for q in self.waiting.values()))
        if self.retries:
            deadlines.append(self.retries[0][0])
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

    def shutdown(self) -> None:
        self.ledger.close()
        self.mesh.close()
        self.router.close(linger=0)
        self.sink.close(linger=0)
        log.info("scheduler %s stopped", self.id)

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
        for error in result.errors:
            log.error("%s (the file's last good version stays in force)", error)
        # Jobs share few schedules: each schedule's next instant is found once.
        next_after_now = cache(lambda cron: cron.next_after(now))
        for name, job in result.jobs.items():
            if self.jobs.get(name) != job:
                self.plan(job, next_after_now(job.cron) if job.enabled else None)
        for name in set(self.jobs) - set(result.jobs):
            self.generation.pop(name, None)
            self.next_instant.pop(name, None)
        self.jobs = result.jobs
        self.ledger.forget(set(self.jobs))
        new_digest = result.digest
        if new_digest != self.members.my_digest:
            log.info("%d jobs loaded, digest %s", len(self.jobs), new_digest)
            self.members.my_digest = new_digest
            self.next_heartbeat = 0.0
        self.next_report = self.next_job_table = now

    def plan(self, job: Job, instant: float | None) -> None:
        """Put the job's next instant on the heap (invalidating older entries)."""
        generation = self.generation.get(job.name, 0) + 1
        self.generation[job.name] = generation
        self.push(job, instant, generation)

    def push(self, job: Job, instant: float | None, generation: int) -> None:
        if instant is None:
            self.next_instant.pop(job.name, None)
            return
        self.next_instant[job.name] = instant
        ahead = self.due_at.get(instant, 0)  # jobs already due at that instant
        self.due_at[instant] = ahead + 1
        # The more there are, the earlier this one goes (see takeover.MAX_EXTRA_LEAD_S).
        lead = LEAD_S + min(MAX_EXTRA_LEAD_S, ahead / ARM_RATE_PER_S)
        if job.overlap != "allow":
            lead = 0.0
        heapq.heappush(self.due, (instant - lead, instant, generation, job.name))

    # -- firing -------------------------------------------------------------------------

    def fire_due_ticks(self, now: float, now_mono: float) -> None:
        """Walk every tick whose dispatch time has come; fire the ones that are ours."""
        while self.due and self.due[0][0] <= now + SPIN_S:
            dispatch_at, tick, generation, name = heapq.heappop(self.due)
            self.clock.spin_until(dispatch_at)
            if name in self.pushed:
                self.fire_message(self.pushed.pop(name), tick, claim=False)
                self.ledger.drop_push(name)
                continue
            self.forget_due(tick)
            if self.generation.get(name) == generation:  # else changed or gone since
                job = self.jobs[name]
                if self.may_fire(job, tick, now_mono):
                    self.catch_up(job, max(now, dispatch_at), now_mono, before=tick, as_of=tick)
                    self.fire(job, tick)
                self.push(job, job.next_after(tick), generation)

    def forget_due(self, tick: float) -> None:
        left = self.due_at.get(tick, 0) - 1
        if left > 0:
            self.due_at[tick] = left
        else:
            self.due_at.pop(tick, None)

    def may_fire(self, job: Job, tick: float, now_mono: float, as_of: float = 0.0) -> bool:
        """Ours to fire: unfired anywhere, we own it, and a quorum job sees a majority."""
        if self.owner(job, tick, now_mono, as_of) != self.id:
            return False
        if self.ledger.has_fired(job.name, tick) or tick <= self.queued.get(job.name, -1.0):
            return False
        return not job.quorum or has_quorum(
            self.members.visible(now_mono), self.config.cluster.schedulers
        )

    def owner(self, job: Job, tick: float, now_mono: float, as_of: float = 0.0) -> str | None:
        """The owner of a tick among the schedulers eligible for it in our current view.

        A late tick whose eligible set is empty (the whole cluster was down, or warming
        up) belongs to the owner `as_of` now; otherwise its owner then, if still live,
        has fired it, and a newcomer must not.
        """
        eligible = self.members.eligible_at(tick, now_mono)
        if not eligible and as_of:
            eligible = self.members.eligible_at(as_of, now_mono)
        if self.members.digests_agree(now_mono):
            return self.owners.owner(job.name, eligible)
        return owner_of(job.name, [p for p in eligible if self.members.knows(p, job.name)])

    def fire(self, job: Job, tick: float, attempt: int = 1) -> None:
        if job.overlap != "allow" and self.overlaps(job, tick):
            return
        msg = self.job_message(job, tick, attempt)
        self.fire_message(msg, tick, job.misfire_grace, claim=attempt == 1)

    def fire_message(self, msg: dict, tick: float, grace: float = 60.0, claim: bool = True) -> None:
        """Dispatch now, or queue the tick for a free slot until tick + grace."""
        if not self.dispatch(msg, claim):
            queue = self.waiting.setdefault(msg["pool"], deque())
            queue.append(Waiting(msg, tick + grace, claim))
            if claim:  # ours, in hand: catch-up must not fire it again while it waits
                self.queued[msg["job"]] = max(tick, self.queued.get(msg["job"], tick))

    def job_message(self, job: Job, tick: float, attempt: int) -> dict:
        return {
            **self.job_message_defaults(),
            "job": job.name, "tick": tick, "attempt": attempt, "pool": job.pool,
            "command": job.command if isinstance(job.command, str) else list(job.command),
            "shell": job.shell, "user": job.user, "env": dict(job.env), "cwd": job.cwd,
            "timeout": job.timeout, "on_timeout": job.on_timeout, "memory_max": job.memory_max,
        }  # fmt: skip

    def job_message_defaults(self) -> dict:
        return {
            "run_id": uuid.uuid4().hex, "attempt": 1, "scheduler": self.id, "shell": "/bin/sh",
            "user": None, "env": {}, "cwd": None, "timeout": None, "on_timeout": "kill",
            "dispatched": 0.0,
        }  # fmt: skip

    def dispatch(self, msg: dict, claim: bool, avoid: str | None = None) -> bool:
        """Send the job to the pool's freest worker, then claim the tick; False if no slot."""
        worker = self.workers.pick(msg["pool"], avoid)
        if worker is None:
            return False
        msg["dispatched"] = self.clock.now()
        self.router.send_multipart([worker.identity, protocol.encode("job", **msg)])
        worker.assign(msg)
        if claim:  # after the send: a claim for a tick no worker got would lose it
            self.claim(msg["job"], msg["tick"])
        return True

    def claim(self, job: str, tick: float) -> None:
        self.ledger.note(job, tick)
        self.claims.append([job, tick])

    def overlaps(self, job: Job, tick: float) -> bool:
        """Apply overlap = forbid (record the tick `skipped`) or replace (cancel the old
        run); True when the tick must not run. Runs this scheduler dispatched count."""
        active = self.workers.active(job.name)
        if not active:
            return False
        if job.overlap == "forbid":
            why = f"overlap = forbid: run {active[0][1]['run_id']} is still running"
            self.counters["skipped"] += 1
            self.record(run_record(self.job_message(job, tick, 1), None, status="skipped",
                                   stderr_tail=why))  # fmt: skip
            self.claim(job.name, tick)
            return True
        for worker, running in active:
            self.counters["replaced"] += 1
            reason = f"overlap = replace: replaced by tick {tick:.3f}"
            self.router.send_multipart([worker.identity, protocol.encode(
                "cancel", run_id=running["run_id"], reason=reason)])  # fmt: skip
        return False

    def record_claims(self) -> None:
        """Tell the peers what we fired, then commit it to the local ledger.

        Peers first: a slow fsync must not hold back the claims (or the heartbeats after
        them), or a live owner could look dead. The commit is for a whole-cluster restart.
        """
        if self.claims:
            self.mesh.broadcast("claims", scheduler=self.id, ticks=self.claims)
            self.claims = []
            self.ledger.flush()

    def dispatch_waiting(self) -> None:
        for pool, queue in list(self.waiting.items()):
            while queue and self.dispatch(queue[0].msg, queue[0].claim):
                queue.popleft()
            if not queue:
                del self.waiting[pool]

    def expire_waiting(self, now: float) -> None:
        """Ticks that waited past their misfire_grace for a slot are recorded `missed`."""
        for pool, queue in list(self.waiting.items()):
            while queue and queue[0].give_up_at <= now:
                msg = queue.popleft().msg
                log.warning(
                    "tick %.3f of %s missed: no free slot in pool %r", msg["tick"], msg["job"], pool
                )
                self.counters["missed"] += 1
                self.record(
                    run_record(
                        msg, None, status="missed", stderr_tail=f"no free slot in pool {pool!r}"
                    )
                )
            if not queue:
                del self.waiting[pool]

    # -- workers ------------------------------------------------------------------------

    def handle_router(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if len(frames) != 2:
                    raise ProtocolError("malformed", f"{len(frames)} frames")
                kind, msg = protocol.decode(frames[1])
                handler = self.handlers.get(kind)
                if handler is None:
                    raise ProtocolError("unexpected_type", kind)
            except ProtocolError as exc:
                self.reject(f"dropped message: {exc}")
                continue
            handler(frames[0], msg)

    def reject(self, why: str) -> None:
        """Count a dropped message; log at most one line per REJECT_LOG_EVERY_S (floods)."""
        self.counters["rejected"] += 1
        now = self.clock.monotonic()
        if now >= self.next_reject_log:
            self.next_reject_log = now + REJECT_LOG_EVERY_S
            log.warning("%s (%d dropped so far)", why, self.counters["rejected"])

    def on_ready(self, identity: bytes, msg: dict) -> None:
        for lost in self.workers.announce(identity, msg, self.clock.monotonic()):
            self.run_lost(lost, f"worker {msg['worker']} restarted")
        self.dispatch_waiting()

    def on_finished(self, identity: bytes, msg: dict) -> None:
        job_msg = self.workers.finished(identity, msg["run_id"])
        if job_msg is not None and msg["status"] in RETRY_ON:
            worker = self.workers.workers.get(identity)
            self.retry(job_msg, worker.id if worker else None)

    def expire_workers(self, now_mono: float) -> None:
        for worker in self.workers.expire(now_mono):
            runs = [*worker.running.values(), *(j for _, j in worker.in_flight)]
            log.warning(
                "worker %s silent for %.1fs: %d runs lost",
                worker.id,
                now_mono - worker.last_seen,
                len(runs),
            )
            for job in runs:
                self.run_lost(job, f"worker {worker.id} stopped answering")

    def run_lost(self, msg: dict, why: str) -> None:
        """Record a run whose worker vanished as `lost` (same run id), then retry if allowed."""
        self.record(run_record(msg, None, status="lost", stderr_tail=why))
        self.retry(msg, None)

    def retry(self, msg: dict, failed_on: str | None) -> None:
        """Fire the next attempt after retry_delay when the job has retries left,
        preferring a worker other than the one it failed on."""
        job = self.jobs.get(msg["job"])
        if job is None or msg["attempt"] > job.retries:
            return
        again = self.job_message(job, msg["tick"], msg["attempt"] + 1)
        self.counters["retries"] += 1
        heapq.heappush(self.retries, (self.clock.now() + job.retry_delay, again["run_id"], again,
                                      failed_on))  # fmt: skip

    def retry_due(self, now: float) -> None:
        while self.retries and self.retries[0][0] <= now:
            _, _, msg, avoid = heapq.heappop(self.retries)
            job = self.jobs.get(msg["job"])
            grace = job.misfire_grace if job else 60.0
            if not self.dispatch(msg, claim=False, avoid=avoid):
                self.waiting.setdefault(msg["pool"], deque()).append(
                    Waiting(msg, now + grace, False)
                )

    # -- results and reports --------------------------------------------------------------

    def record(self, rec: dict) -> None:
        """Spool a record this scheduler made (missed, lost) and send it to the sink."""
        self.spool.add(rec)
        send_nowait(self.sink, protocol.encode("result", record=rec))
        self.spool.mark_sent(rec["run_id"], self.clock.monotonic())

    def send_job_table(self, report: dict, now: float) -> None:
        """The job table with next ticks, in parts; large tables less often (idle CPU)."""
        self.next_job_table = now + max(REPORT_EVERY_S, len(self.jobs) / 1000)
        table = [dict(to_wire(job), next_tick=self.next_instant.get(name))
                 for name, job in self.jobs.items()]  # fmt: skip
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
            "eligible": int(self.members.self_eligible),
            "digests_agree": int(self.members.digests_agree(now_mono)),
            "live_peers": len(self.members.live(now_mono)),
        }

    def handle_sink(self) -> None:
        self.spool.take_acks(self.sink, self.reject)

    def report_if_due(self, now: float) -> None:
        """Tell the sink our jobs and their next instants; re-send unacknowledged records."""
        if now < self.next_report:
            return
        self.next_report = now + REPORT_EVERY_S
        now_mono = self.clock.monotonic()
        report = {"scheduler": self.id, "sent": now, "stats": self.stats(),
                  "clock_offsets": {p.id: p.clock_offset for p in self.members.live(now_mono)
                                    if p.clock_offset is not None}}  # fmt: skip
        if now >= self.next_job_table:
            self.send_job_table(report, now)
        else:
            send_nowait(self.sink, protocol.encode("jobs", jobs=[], part=0, parts=0, **report))
        for rec in self.spool.due(now_mono):
            send_nowait(self.sink, protocol.encode("result", record=rec))


RETRY_ON = ("failed", "timeout", "killed")


def cmd_scheduler(args: dict) -> int:
    config = load_daemon_config(args)
    config = config.with_overrides("scheduler", id=args.get("--id"))
    config.scheduler_address()  # an unknown id is a configuration error, before anything binds
    setup_logging(f"zcron-scheduler[{config.scheduler.id}]")
    return Scheduler(config).run()
