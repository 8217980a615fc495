"""Scheduler: keeps a heap of next fire instants, sleeps until the earliest, dispatches at it.

No per-second scan of all jobs: each fired tick pushes that job's next instant onto the
heap, so the loop's cost follows the ticks that are due, and idle means a long poll.
Due ticks go to the worker of the job's pool with the most announced free slots; when no
slot is free the tick waits here (bounded by the job's misfire_grace), then is `missed`.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass

import zmq

from zcron import protocol
from zcron.config import Config, load_config
from zcron.daemon import Signals, notify
from zcron.errors import ProtocolError
from zcron.log import setup_logging
from zcron.net import bind, make_socket
from zcron.process import run_record
from zcron.schedule import Job, ScheduleDir, digest, to_wire
from zcron.slots import WorkerTable
from zcron.spool import Spool
from zcron.watch import POLL_INTERVAL_S, DirectoryWatch

log = logging.getLogger(__name__)
REPORT_EVERY_S = 2.0
RELOAD_SETTLE_S = 0.05  # let an editor finish writing before re-reading
SPIN_S = 0.002  # the last stretch before an instant is spun, not slept: poll wakes in whole ms
# Ticks go to a worker this long before their instant; the worker parks the process and
# releases it at the instant (see process.py). Jobs whose overlap policy must be decided at
# the instant (forbid, replace) are dispatched at the instant instead.
LEAD_S = 0.5


@dataclass
class Waiting:
    """A due tick that found no free slot in its pool."""

    msg: dict
    give_up_at: float  # wall clock: the tick plus the job's misfire_grace


class Scheduler:
    """run() → poll() → handle_* per ready socket → fire_due_ticks(now) → timed steps."""

    def __init__(self, config: Config):
        self.config = config
        self.id = config.scheduler.id
        self.address = config.scheduler_address()
        self.signals = Signals()
        self.schedules = ScheduleDir(config.scheduler.schedules)
        self.watch = DirectoryWatch(config.scheduler.schedules)
        self.jobs: dict[str, Job] = {}
        self.generation: dict[str, int] = {}
        self.due: list[tuple[float, float, int, str]] = []  # (dispatch at, tick, generation, job)
        self.waiting: dict[str, deque[Waiting]] = {}
        self.workers = WorkerTable(config.cluster.peer_timeout)
        self.spool = Spool(f"{config.scheduler.state}/spool")
        self.ctx = zmq.Context.instance()
        self.poller = zmq.Poller()
        self.next_instant: dict[str, float] = {}
        self.pushed: dict[str, dict] = {}  # one-off jobs from `zcron push`, by name
        self.errors: list = []
        self.reload_at: float | None = None
        self.next_report = 0.0
        self.next_poll_dir = 0.0
        self.rejected = 0
        self.handlers = {
            "ready": self.on_ready,
            "finished": self.on_finished,
            "request": self.on_request,
        }

    # -- set-up -------------------------------------------------------------------------

    def bind(self) -> None:
        cluster = self.config.cluster
        self.router = make_socket(self.ctx, zmq.ROUTER)
        bind(self.router, self.address, cluster.insecure, cluster.keys)
        self.sink = make_socket(self.ctx, zmq.DEALER, identity=f"scheduler-{self.id}")
        self.sink.connect(cluster.sink)
        for sock in (self.router, self.sink, self.signals.fd):
            self.poller.register(sock, zmq.POLLIN)
        if self.watch.fd is not None:
            self.poller.register(self.watch.fd, zmq.POLLIN)

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
        self.bind()
        self.reload(time.time())
        notify("READY=1")
        log.info(
            "scheduler %s on %s: %d jobs from %s",
            self.id,
            self.address,
            len(self.jobs),
            self.config.scheduler.schedules,
        )
        while not self.signals.stopping:
            ready = dict(self.poller.poll(self.timeout_ms(time.time())))
            self.handle_events(ready)
            now = time.time()
            self.fire_due_ticks(now)
            self.expire_waiting(now)
            self.expire_workers(now)
            self.reload_if_due(now)
            self.report_if_due(now)
        notify("STOPPING=1")
        self.router.close(linger=0)
        self.sink.close(linger=0)
        log.info("scheduler %s stopped", self.id)
        return 0

    def timeout_ms(self, now: float) -> int:
        """Milliseconds until the next thing to do, waking just before a tick instant."""
        deadlines = [self.next_report, now + 60]
        if self.due:
            deadlines.append(self.due[0][0] - SPIN_S)
        if self.reload_at is not None:
            deadlines.append(self.reload_at)
        if self.watch.fd is None:
            deadlines.append(self.next_poll_dir)
        if self.waiting:
            deadlines.append(min(q[0].give_up_at for q in self.waiting.values()))
        if self.workers.workers:
            deadlines.append(now + self.config.cluster.heartbeat)
        return max(0, int((min(deadlines) - now) * 1000))

    def handle_events(self, ready: dict) -> None:
        if self.signals.fd in ready:
            self.signals.drain()
            if self.signals.reload:
                self.signals.reload = False
                log.info("SIGHUP: re-reading %s", self.config.scheduler.schedules)
                self.reload_at = time.time()
        if self.watch.fd is not None and self.watch.fd in ready and self.watch.changed():
            self.reload_at = time.time() + RELOAD_SETTLE_S
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
        for error in result.errors:
            log.error("%s (the file's last good version stays in force)", error)
        for name, job in result.jobs.items():
            if self.jobs.get(name) != job:
                self.plan(job, now)
        for name in set(self.jobs) - set(result.jobs):
            self.generation.pop(name, None)
            self.next_instant.pop(name, None)
        if result.changed or not self.jobs:
            log.info("%d jobs loaded, digest %s", len(result.jobs), digest(result.jobs))
        self.jobs = result.jobs
        self.next_report = now

    def plan(self, job: Job, after: float) -> None:
        """Put the job's next instant after `after` on the heap (invalidating older entries)."""
        generation = self.generation.get(job.name, 0) + 1
        self.generation[job.name] = generation
        self.push(job, job.next_after(after) if job.enabled else None, generation)

    def push(self, job: Job, instant: float | None, generation: int) -> None:
        if instant is None:
            self.next_instant.pop(job.name, None)
            return
        self.next_instant[job.name] = instant
        lead = LEAD_S if job.overlap == "allow" else 0.0
        heapq.heappush(self.due, (instant - lead, instant, generation, job.name))

    # -- firing -------------------------------------------------------------------------

    def fire_due_ticks(self, now: float) -> None:
        """Dispatch every tick whose instant has come; spin the last stretch to the instant."""
        while self.due and self.due[0][0] <= now + SPIN_S:
            dispatch_at, instant, generation, name = heapq.heappop(self.due)
            while time.time() < dispatch_at:
                pass
            if name in self.pushed:
                self.fire_message(self.pushed.pop(name), instant)
                continue
            if self.generation.get(name) != generation:
                continue  # the job changed or went away since this entry was planned
            job = self.jobs[name]
            self.fire(job, instant)
            self.push(job, job.next_after(instant), generation)
            now = time.time()

    def fire(self, job: Job, tick: float, attempt: int = 1) -> None:
        self.fire_message(self.job_message(job, tick, attempt), tick, job.misfire_grace)

    def fire_message(self, msg: dict, tick: float, grace: float = 60.0) -> None:
        """Dispatch now, or queue the tick for a free slot until tick + grace."""
        if not self.dispatch(msg):
            self.waiting.setdefault(msg["pool"], deque()).append(Waiting(msg, tick + grace))

    def job_message(self, job: Job, tick: float, attempt: int) -> dict:
        return {
            **self.job_message_defaults(),
            "job": job.name,
            "tick": tick,
            "attempt": attempt,
            "pool": job.pool,
            "command": job.command if isinstance(job.command, str) else list(job.command),
            "shell": job.shell,
            "user": job.user,
            "env": dict(job.env),
            "cwd": job.cwd,
            "timeout": job.timeout,
            "on_timeout": job.on_timeout,
        }

    def job_message_defaults(self) -> dict:
        return {
            "run_id": uuid.uuid4().hex,
            "attempt": 1,
            "scheduler": self.id,
            "shell": "/bin/sh",
            "user": None,
            "env": {},
            "cwd": None,
            "timeout": None,
            "on_timeout": "kill",
            "dispatched": 0.0,
        }

    def dispatch(self, msg: dict, avoid: str | None = None) -> bool:
        """Send the job to the pool's freest worker; False when no slot is free."""
        worker = self.workers.pick(msg["pool"], avoid)
        if worker is None:
            return False
        msg["dispatched"] = time.time()
        self.router.send_multipart([worker.identity, protocol.encode("job", **msg)])
        worker.assign(msg)
        return True

    def dispatch_waiting(self) -> None:
        for pool, queue in list(self.waiting.items()):
            while queue and self.dispatch(queue[0].msg):
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
                self.record(
                    run_record(
                        msg, None, status="missed", stderr_tail=f"no free slot in pool {pool!r}"
                    )
                )
            if not queue:
                del self.waiting[pool]

    # -- workers and requests -------------------------------------------------------------

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
                self.rejected += 1
                log.warning("dropped message: %s", exc)
                continue
            handler(frames[0], msg)

    def on_ready(self, identity: bytes, msg: dict) -> None:
        for lost in self.workers.announce(identity, msg, time.time()):
            self.run_lost(lost, f"worker {msg['worker']} restarted")
        self.dispatch_waiting()

    def on_finished(self, identity: bytes, msg: dict) -> None:
        self.workers.finished(identity, msg["run_id"])

    def expire_workers(self, now: float) -> None:
        for worker in self.workers.expire(now):
            log.warning(
                "worker %s silent for %.1fs: %d runs lost",
                worker.id,
                now - worker.last_seen,
                len(worker.running) + len(worker.in_flight),
            )
            for job in [*worker.running.values(), *(j for _, j in worker.in_flight)]:
                self.run_lost(job, f"worker {worker.id} stopped answering")

    def run_lost(self, msg: dict, why: str) -> None:
        """Record a run whose worker vanished as `lost` (same run id), then retry if allowed."""
        self.record(run_record(msg, None, status="lost", stderr_tail=why))
        job = self.jobs.get(msg["job"])
        if job is not None and msg["attempt"] <= job.retries:
            self.fire(job, msg["tick"], msg["attempt"] + 1)

    def on_request(self, identity: bytes, msg: dict) -> None:
        op = msg["op"]
        try:
            body = getattr(self, f"request_{op}")(msg["args"]) if op in REQUESTS else None
            reply = {
                "ok": op in REQUESTS,
                "error": None if op in REQUESTS else f"unknown request {op!r}",
                "body": body,
            }
        except (KeyError, TypeError, ValueError) as exc:
            reply = {"ok": False, "error": str(exc), "body": None}
        self.router.send_multipart([identity, protocol.encode("reply", **reply)])

    def request_run(self, args: dict) -> dict:
        name = args["job"]
        if name not in self.jobs:
            raise KeyError(f"no job named {name!r} on scheduler {self.id}")
        tick = time.time()
        self.fire(self.jobs[name], tick)
        return {"job": name, "tick": tick}

    def request_push(self, args: dict) -> dict:
        """An ad-hoc one-off command, now or at `at` (kept in memory: lost on restart)."""
        command, at = args["command"], float(args["at"])
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) for a in command)
        ):
            raise ValueError("push: command must be a non-empty list of strings")
        run_id = uuid.uuid4().hex
        name = f"push:{run_id[:12]}"
        msg = {
            **self.job_message_defaults(),
            "run_id": run_id,
            "job": name,
            "tick": at,
            "pool": str(args["pool"]),
            "command": command,
            "timeout": args.get("timeout"),
        }
        self.pushed[name] = msg
        heapq.heappush(self.due, (at - LEAD_S, at, 0, name))
        return {"job": name, "run_id": run_id, "tick": at}

    def request_status(self, args: dict) -> dict:
        return {
            "scheduler": self.id,
            "jobs": len(self.jobs),
            "digest": digest(self.jobs),
            "pools": self.workers.pools(),
            "workers": [
                {
                    "id": w.id,
                    "pools": w.pools,
                    "slots": w.slots,
                    "free": max(0, w.credit),
                    "running": len(w.running),
                }
                for w in self.workers.workers.values()
            ],
            "waiting": {pool: len(q) for pool, q in self.waiting.items()},
            "errors": [str(e) for e in self.errors],
        }

    # -- results and reports --------------------------------------------------------------

    def record(self, rec: dict) -> None:
        """Spool a record this scheduler made (missed, lost) and send it to the sink."""
        self.spool.add(rec)
        self.sink.send(protocol.encode("result", record=rec))
        self.spool.mark_sent(rec["run_id"], time.monotonic())

    def handle_sink(self) -> None:
        while True:
            try:
                frame = self.sink.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                kind, msg = protocol.decode(frame)
            except ProtocolError as exc:
                self.rejected += 1
                log.warning("dropped message from sink: %s", exc)
                continue
            if kind == "ack":
                self.spool.ack(msg["run_ids"])

    def report_if_due(self, now: float) -> None:
        """Tell the sink our jobs and their next instants; re-send unacknowledged records."""
        if now < self.next_report:
            return
        self.next_report = now + REPORT_EVERY_S
        jobs = [
            dict(to_wire(job), next_tick=self.next_instant.get(name))
            for name, job in self.jobs.items()
        ]
        self.sink.send(protocol.encode("jobs", scheduler=self.id, jobs=jobs, sent=now))
        for rec in self.spool.due(time.monotonic()):
            self.sink.send(protocol.encode("result", record=rec))


REQUESTS = ("run", "push", "status")


def cmd_scheduler(args: dict) -> int:
    config = load_config(args.get("--config"))
    config = config.with_overrides("scheduler", id=args.get("--id"))
    config.scheduler_address()  # an unknown id is a configuration error, before anything binds
    setup_logging(f"zcron-scheduler[{config.scheduler.id}]")
    return Scheduler(config).run()
