"""Worker: takes jobs from schedulers while it has free slots, runs them, reports results.

Workers connect a DEALER to every scheduler and announce their free slots (`ready`);
a scheduler sends a job only to a worker that has announced room for it (the ZeroMQ
guide's load-balancing pattern), so no due job waits behind a busy worker.
Results go to a durable spool first and are re-sent until the sink acknowledges them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import resource
import select
import signal
from collections import deque
from collections.abc import Callable

import zmq

from zcron import protocol
from zcron.auth import Security
from zcron.clock import SPIN_S, Clock
from zcron.config import Config, load_daemon_config
from zcron.daemon import Notifier, Signals
from zcron.errors import ConfigError
from zcron.log import setup_logging
from zcron.net import make_socket, receive, send_nowait
from zcron.process import KILL_GRACE_S, Refused, Run, arm_run, run_record
from zcron.spawner import Spawner, SpawnerGone
from zcron.spool import Spool

log = logging.getLogger(__name__)
# Arming (three pipes and a request to a spawner) costs ~0.1 ms: a burst of thousands of
# jobs is armed this much per turn of the loop, so releases, results and heartbeats go on
# meanwhile (a silent worker is taken for dead).
ARM_BUDGET_S = 0.02
FDS_PER_RUN = 3  # stdout, stderr, and the parked process's stdin until released
SPAWNERS = 2
FDS_RESERVED = 64  # sockets, spool files, logging
MAX_RUNNING_LISTED = protocol.SCHEMAS["ready"]["running"][2]


class Worker:
    """Run() → poll() → handle_* per ready socket or fd → timed steps."""

    def __init__(
        self, config: Config, reload: Callable[[], Config] | None = None, clock: Clock | None = None
    ):
        self.config = config
        self.clock = clock or Clock()
        self.load_config = reload  # SIGHUP: the settings again, as at start
        self.id = config.worker.id
        self.pools = list(config.worker.pool)
        self.slots = usable_slots(config.worker.slots)
        self.heartbeat_s = config.cluster.heartbeat
        self.signals = Signals()
        self.notifier = Notifier()
        self.ctx = zmq.Context.instance()
        self.schedulers: dict[zmq.Socket, str] = {}
        self.seen: dict[str, int] = {}
        self.running: dict[str, Run] = {}
        self.by_fd: dict[int, Run] = {}  # output pipe -> its run
        self.by_request: dict[int, Run] = {}  # spawn request -> its run, until answered
        self.by_pid: dict[int, Run] = {}  # spawned and not yet reaped
        self.timeouts: list[tuple[float, str]] = []
        self.accepted: list[list] = []  # [job, tick] received since the last `accepted`
        self.backlog: deque[dict] = deque()  # jobs received, not yet armed
        self.spawners_full = False  # no spawner had room for the next job in the backlog
        self.armed: list[tuple[float, str]] = []  # (tick, run_id): parked until their instant
        self.spool = Spool(config.worker.spool)
        self.poller = zmq.Poller()
        # The runs' pipes sit in one epoll set, polled as one fd: zmq's poll() costs
        # O(fds) a call, and a burst of thousands of runs holds three fds each.
        self.run_fds = select.epoll()
        self.poller.register(self.run_fds.fileno(), zmq.POLLIN)
        # Spawns go round the spawners: each waits in a vfork until its child has exec'd,
        # which under load is the slowest step of arming; two wait side by side.
        request_ids = itertools.count(1)
        self.spawners = {}
        for _ in range(SPAWNERS):
            spawner = Spawner(request_ids)
            self.spawners[spawner.fileno()] = spawner
            self.poller.register(spawner.fileno(), zmq.POLLIN)
        self.next_spawner = itertools.cycle(list(self.spawners.values()))
        self.next_heartbeat = 0.0
        self.next_resend = 0.0
        self.rejected = 0
        self.drain_killed = False
        self.freed = False  # a slot freed since the last announcement

    # -- set-up -------------------------------------------------------------------------

    def connect(self) -> None:

        # CURVE when [cluster] keys is set: our key, and each server's public key pinned.
        self.security = Security.from_config(self.config.cluster, self.id)
        for sid, address in self.config.cluster.schedulers.items():
            sock = make_socket(self.ctx, zmq.DEALER, identity=self.id)
            self.security.client(sock, sid)
            sock.connect(address)
            self.schedulers[sock] = sid
            self.seen[sid] = 0
            self.poller.register(sock, zmq.POLLIN)
        self.sink = make_socket(self.ctx, zmq.DEALER, identity=self.id)
        self.security.client(self.sink, "sink")
        self.sink.connect(self.config.cluster.sink)
        self.poller.register(self.sink, zmq.POLLIN)
        self.poller.register(self.signals.fd, zmq.POLLIN)

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
        self.connect()
        self.notifier.ready(self.status_line())
        log.info("worker %s serving pools %s with %d slots", self.id, self.pools, self.slots)
        try:
            while not self.finished_draining():
                self.step()
        except SpawnerGone as exc:
            log.error("%s: stopping (its runs can no longer be watched)", exc)
            return 1
        self.notifier.stopping()
        self.shutdown()
        return 0

    def step(self) -> None:
        ready = dict(self.poller.poll(self.timeout_ms()))
        self.handle_ready(ready)
        self.release_due_runs()
        self.arm_backlog()
        self.announce_if_freed()
        now = self.clock.monotonic()
        self.enforce_timeouts(now)
        self.heartbeat_if_due(now)
        self.resend_if_due(now)
        self.notifier.watchdog_if_due(now)

    def finished_draining(self) -> bool:
        """Stop once drained: no run left (a hard stop: at once); past the drain timeout,
        kill what still runs (TERM, grace, KILL) and stop when it is reaped and recorded."""
        idle = not self.running and not self.backlog
        if self.signals.hard_stop or (self.signals.stopping and idle):
            return True
        now = self.clock.monotonic()
        if self.signals.stopping and now > self.drain_deadline() and not self.drain_killed:
            log.warning("drain timeout: killing %d runs", len(self.running))
            self.drain_killed = True
            for run in self.running.values():
                self.kill(run, now)
        return False

    def drain_deadline(self) -> float:
        if not hasattr(self, "_drain_until"):
            self._drain_until = self.clock.monotonic() + self.config.worker.drain_timeout
            log.info("draining: no new jobs; waiting for %d runs", len(self.running))
            self.announce()
        return self._drain_until

    def timeout_ms(self) -> int:
        if self.backlog and not self.spawners_full:
            return 0
        now = self.clock.monotonic()
        deadlines = [self.next_heartbeat, self.next_resend if self.spool.pending else now + 5]
        deadlines.append(self.notifier.watchdog_due(now))
        if self.timeouts:
            deadlines.append(self.timeouts[0][0])
        if self.backlog:  # the spawners' answers (polled) or a millisecond make room
            deadlines.append(now + 0.001)
        # Tick instants are wall clock: wake just before, then spin.
        ticks = [self.armed[0][0] - SPIN_S] if self.armed else []
        return self.clock.timeout_ms(ticks, deadlines)

    def handle_ready(self, ready: dict) -> None:
        for item in ready:
            if item is self.signals.fd:
                self.signals.drain()
                self.reload_if_asked()
            elif item is self.sink:
                self.handle_sink()
            elif item in self.schedulers:
                self.handle_scheduler(item)
            elif item == self.run_fds.fileno():
                for fd, _ in self.run_fds.poll(0):
                    self.handle_fd(fd)
            elif item in self.spawners:
                self.handle_spawner(self.spawners[item])

    # -- scheduler side -----------------------------------------------------------------

    def handle_scheduler(self, sock: zmq.Socket) -> None:
        sid = self.schedulers[sock]
        dropped = f"dropped message from scheduler {sid}: "
        for kind, msg in receive(sock, ("job", "cancel"), lambda why: self.reject(dropped + why)):
            if kind == "cancel":
                self.cancel(msg["run_id"], msg["reason"], self.clock.monotonic())
                continue
            self.seen[sid] += 1
            self.accepted.append([msg["job"], msg["tick"]])
            self.backlog.append(msg)
        self.tell_accepted()

    def cancel(self, run_id: str, reason: str, now: float) -> None:
        """The scheduler wants the run gone (overlap = replace): kill its group, record `killed`."""
        queued = next((m for m in self.backlog if m["run_id"] == run_id), None)
        if queued is not None:  # received, not yet armed: it never starts
            self.backlog.remove(queued)
            rec = run_record(queued, self.id, status="killed", stderr_tail=f"cancelled: {reason}")
            self.report(rec)
            self.tell_finished(rec)
            return
        run = self.running.get(run_id)
        if run is None or run.cancelled:
            log.info("cancel of run %s: not running here (it may just have ended)", run_id)
            return
        log.warning("run %s of %s cancelled: %s", run_id, run.msg["job"], reason)
        run.cancelled = reason
        self.kill(run, now)

    def kill(self, run: Run, now: float) -> None:
        """SIGTERM the run's group now, SIGKILL it after the grace (see enforce_timeouts)."""
        run.begin_kill(now, KILL_GRACE_S)
        heapq.heappush(self.timeouts, (run.kill_at, run.run_id))

    def tell_accepted(self) -> None:
        """Tell every scheduler which ticks we took: if their owner dies before its claim
        reaches the others, this is how the next owner knows not to fire them again."""
        if not self.accepted:
            return
        frame = protocol.encode("accepted", worker=self.id, ticks=self.accepted)
        for other in self.schedulers:
            send_nowait(other, frame)
        self.accepted = []

    def arm_backlog(self) -> None:
        """Arm received jobs for at most ARM_BUDGET_S, releasing runs as their ticks come;
        stop for this turn when every spawner has a socket's worth to do."""
        until = self.clock.monotonic() + ARM_BUDGET_S
        self.spawners_full = False
        while self.backlog and self.clock.monotonic() < until:
            if not self.start(self.backlog[0]):
                self.spawners_full = True
                return
            self.backlog.popleft()
            self.release_due_runs()

    def start(self, msg: dict) -> bool:
        """Arm the run now; release it at its tick (at once when the tick has come). False
        when no spawner can take it now (it stays where it is, to be armed later)."""
        if self.signals.stopping:
            self.refuse(msg, "worker draining: it takes no new jobs")
            return True
        try:
            # Round the spawners from the next one, each tried once.
            run = arm_run(msg, self.id, itertools.islice(self.next_spawner, len(self.spawners)))
        except Refused as exc:
            log.warning("run %s of %s refused: %s", msg["run_id"], msg["job"], exc)
            self.refuse(msg, str(exc))
            return True
        if run is None:
            return False
        self.running[run.run_id] = run
        self.by_request[run.request] = run
        self.watch(run)
        heapq.heappush(self.armed, (msg["tick"], run.run_id))
        return True

    def refuse(self, msg: dict, reason: str) -> None:
        rec = run_record(msg, self.id, status="refused", stderr_tail=reason)
        self.report(rec)
        self.tell_finished(rec)
        self.freed = True

    def release_due_runs(self) -> None:
        """Release every armed run whose tick has come, spinning the last stretch."""
        while self.armed and self.armed[0][0] <= self.clock.now() + SPIN_S:
            tick, run_id = heapq.heappop(self.armed)
            self.clock.spin_until(tick)
            run = self.running.get(run_id)
            if run is not None and not run.killed_by_us:  # cancelled while parked: never runs
                run.release(self.clock.now(), self.clock.monotonic())
                if run.deadline is not None:
                    heapq.heappush(self.timeouts, (run.deadline, run_id))

    def watch(self, run: Run) -> None:
        for fd in run.pipes():
            self.by_fd[fd] = run
            self.run_fds.register(fd, select.EPOLLIN)

    def handle_fd(self, fd: int) -> None:
        run = self.by_fd.get(fd)
        if run is not None and not run.read_pipe(fd):
            self.forget_fd(fd)
            run.close_pipe(fd)

    def handle_spawner(self, spawner: Spawner) -> None:
        """Pids of runs the spawner started (or why it could not), and exit statuses."""
        for answer in spawner.replies():
            if "id" in answer:
                run = self.by_request.pop(answer["id"])
                if "error" in answer:
                    self.spawn_failed(run, answer["error"])
                else:
                    run.spawned(answer["pid"], answer["at"])
                    self.by_pid[answer["pid"]] = run
            elif (run := self.by_pid.pop(answer["pid"], None)) is not None:
                run.exited(answer["status"])
                self.complete(run)

    def spawn_failed(self, run: Run, error: str) -> None:
        log.warning("run %s of %s refused: %s", run.run_id, run.msg["job"], error)
        for fd in run.pipes():
            self.forget_fd(fd)
        run.finish(self.clock.now())
        del self.running[run.run_id]
        self.refuse(run.msg, error)

    def forget_fd(self, fd: int) -> None:
        self.by_fd.pop(fd, None)
        try:
            self.run_fds.unregister(fd)
        except FileNotFoundError:
            pass  # never registered

    def complete(self, run: Run) -> None:
        for fd in run.pipes():
            self.forget_fd(fd)
        rec = run.finish(self.clock.now())
        del self.running[run.run_id]
        self.report(rec)
        self.tell_finished(rec)
        self.freed = True

    def tell_finished(self, rec: dict) -> None:
        """Tell the run's scheduler it ended (it frees the run's overlap state and slot)."""
        owner = self.owner_socket(rec["scheduler"])
        if owner is not None:
            frame = protocol.encode(
                "finished", run_id=rec["run_id"], job=rec["job"], status=rec["status"]
            )
            send_nowait(owner, frame)

    def owner_socket(self, scheduler_id: str) -> zmq.Socket | None:
        return next((s for s, sid in self.schedulers.items() if sid == scheduler_id), None)

    def enforce_timeouts(self, now: float) -> None:
        while self.timeouts and self.timeouts[0][0] <= now:
            _, run_id = heapq.heappop(self.timeouts)
            run = self.running.get(run_id)
            if run is None:
                continue
            if run.kill_at is not None:
                if now >= run.kill_at:  # else a timeout that came after a cancel or drain kill
                    run.signal_group(signal.SIGKILL)
            elif run.msg["on_timeout"] == "kill":
                log.warning("run %s of %s timed out: killing its group", run_id, run.msg["job"])
                run.timed_out = True
                self.kill(run, now)
            else:
                log.warning(
                    "run %s of %s is past its timeout (on_timeout=alert)", run_id, run.msg["job"]
                )
                run.timed_out = True

    # -- announcements and results ------------------------------------------------------

    def announce(self) -> None:
        """Tell every scheduler (and the sink) how many slots are free right now."""
        slots = {
            "worker": self.id,
            "pools": self.pools,
            "slots": self.slots,
            "free": 0 if self.signals.stopping else max(0, self.slots - self.busy()),
            "running": list(self.running)[:MAX_RUNNING_LISTED],
            "running_jobs": [r.msg["job"] for r in self.running.values()][:MAX_RUNNING_LISTED],
            "spool": len(self.spool),
            "handshake_failures": self.security.handshake_failures,
        }
        self.freed = False
        for sock, sid in self.schedulers.items():
            send_nowait(sock, protocol.encode("ready", seen=self.seen[sid], **slots))
        send_nowait(self.sink, protocol.encode("ready", seen=0, **slots))

    def reload_if_asked(self) -> None:
        """SIGHUP: re-read the settings (pools, slots, drain timeout) and announce them."""
        if not self.signals.reload or self.load_config is None:
            return
        self.signals.reload = False
        self.notifier.reloading()
        try:
            config = self.load_config()
        except ConfigError as exc:
            log.error("SIGHUP: %s (the settings in force are kept)", exc)
        else:
            self.config = config
            self.pools, self.slots = list(config.worker.pool), usable_slots(config.worker.slots)
            log.info("SIGHUP: serving pools %s with %d slots", self.pools, self.slots)
            self.announce()
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        return f"pools {','.join(self.pools)}, {self.slots} slots"

    def announce_if_freed(self) -> None:
        """Once per turn of the loop, however many runs ended in it: a burst of thousands
        of results must not cost thousands of announcements."""
        if self.freed:
            self.announce()

    def busy(self) -> int:
        """Slots in use: runs armed or running, and jobs received but not yet armed."""
        return len(self.running) + len(self.backlog)

    def heartbeat_if_due(self, now: float) -> None:
        if now >= self.next_heartbeat:
            self.announce()
            self.next_heartbeat = now + self.heartbeat_s

    def report(self, rec: dict) -> None:
        self.spool.add(rec)
        self.send_result(rec, self.clock.monotonic())

    def send_result(self, rec: dict, now: float) -> None:
        send_nowait(self.sink, protocol.encode("result", record=rec))
        self.spool.mark_sent(rec["run_id"], now)

    def resend_if_due(self, now: float) -> None:
        if now < self.next_resend or not self.spool.pending:
            return
        self.next_resend = now + 1.0
        for rec in self.spool.due(now):
            self.send_result(rec, now)

    def handle_sink(self) -> None:
        self.spool.take_acks(self.sink, self.reject)

    def reject(self, why: str) -> None:
        self.rejected += 1
        log.warning("%s", why)

    def shutdown(self) -> None:
        for run in list(self.running.values()):
            run.begin_kill(self.clock.monotonic(), grace=0.0)
        # Give the sink a moment to acknowledge what finished during the drain.
        deadline = self.clock.monotonic() + 2.0
        while self.spool.pending and self.clock.monotonic() < deadline:
            if self.sink.poll(100):
                self.handle_sink()
        self.announce()
        for sock in [*self.schedulers, self.sink]:
            sock.close(linger=0)
        self.run_fds.close()
        for spawner in self.spawners.values():
            spawner.close()
        log.info("worker %s stopped (%d results left in spool)", self.id, len(self.spool))


def usable_slots(slots: int) -> int:
    """`slots`, or fewer when the open-file limit cannot hold that many runs' pipes."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY or slots * FDS_PER_RUN + FDS_RESERVED <= limit:
        return slots
    usable = max(1, (limit - FDS_RESERVED) // FDS_PER_RUN)
    log.warning("%d slots need %d open files (limit %d): using %d slots", slots,
                slots * FDS_PER_RUN + FDS_RESERVED, limit, usable)  # fmt: skip
    return usable


def worker_config(args: dict) -> Config:
    """The configuration file with the command line's options on top."""
    config = load_daemon_config(args)
    pools = tuple(p for p in (args.get("--pool") or "").split(",") if p) or None
    slots = int(args["--slots"]) if args.get("--slots") else None
    if slots is not None and slots < 1:
        raise ConfigError("--slots: expected a whole number >= 1")
    return config.with_overrides("worker", id=args.get("--id"), pool=pools, slots=slots)


def cmd_worker(args: dict) -> int:
    config = worker_config(args)
    setup_logging(f"zcron-worker[{config.worker.id}]")
    return Worker(config, reload=lambda: worker_config(args)).run()
