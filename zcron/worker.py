"""Worker: takes jobs from schedulers while it has free slots, runs them, reports results.

Workers connect a DEALER to every scheduler and announce their free slots (`ready`);
a scheduler sends a job only to a worker that has announced room for it (the ZeroMQ
guide's load-balancing pattern), so no due job waits behind a busy worker. Beyond its
free slots a worker takes up to `prefetch` jobs into a local queue and starts the next
the moment a slot frees (zcron/prefetch.py); `slots` limits running commands.
Results go to a durable spool first and are re-sent until the sink acknowledges them.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import select
import signal
from collections.abc import Callable

import zmq

from zcron import protocol
from zcron.auth import Security
from zcron.clock import SPIN_S, Clock
from zcron.coalesce import Coalescer
from zcron.config import Config, check_secure, load_daemon_config
from zcron.daemon import Notifier, Rejects, Signals, run_daemon, slots_option
from zcron.errors import ConfigError
from zcron.fence import is_stale, lease_s, stall_bound_s
from zcron.log import setup_logging
from zcron.mail import Mailer
from zcron.net import incarnation, keepalive, make_socket, receive, send_nowait
from zcron.prefetch import capacity, park_ahead, prefetch_of, take_all
from zcron.process import KILL_GRACE_S, Refused, Run, arm_run
from zcron.protocol import run_record
from zcron.roles import Roles
from zcron.runs import RunTable
from zcron.spawner import Spawner, SpawnerGone, start_spawners
from zcron.spool import Spool
from zcron.statedir import hold

log = logging.getLogger(__name__)
# Arming (three pipes and a request to a spawner) costs ~0.1 ms: a burst of thousands of
# jobs is armed this much per turn of the loop, so releases, results and heartbeats go on
# meanwhile (a silent worker is taken for dead).
ARM_BUDGET_S = 0.02
FDS_PER_RUN = 4  # stdout, stderr, the pidfd, and the parked process's stdin until released
# Spawner processes (more wait in vforks side by side). Two had been measured better before
# the whole queue was parked ahead and slots freed at the exit's pidfd; now, on 2 cores,
# one is better everywhere measured: 1,000 jobs/s at 2 slots 7,369 against 6,124 of
# 10,000 started, at 4 slots 7,354 against 7,131; 1,000 due at once all started after
# 0.93-1.04 against 1.23-1.29 s (2 slots); 5,000 at 64 slots 4.67 against 5.55 s; and
# 1.3 MiB less PSS idle, ~10 MiB less at 1,000 jobs/s (its answers in one stream).
SPAWNERS = 1
# How long the spawners' answers may wait while runs wait for a slot (hold_answers_while_queued).
# 100 jobs/s at 2 slots, 10 s windows, interleaved runs: the last start of each second came
# 79-81 ms after the tick with the answers read at once, 57-58 ms with them waiting (p99
# 88-93 against 61-67 ms). Records reach the sink that much later under load, not idle.
ANSWERS_WAIT_S = 0.03
FDS_RESERVED = 64  # sockets, spool files, logging
MAX_RUNNING_LISTED = protocol.SCHEMAS["ready"]["running"][2]
MAX_PAIRS, MAX_ENDED = protocol.MAX_PAIRS, protocol.MAX_ENDED
# A scheduler refuses a second process with a live worker's id; the refusals of a restart
# last until the old incarnation's silence passes peer_timeout. Longer than this many
# peer_timeouts, another live worker has our id: we stop (exit 2) and say so.
REFUSED_FOR_TIMEOUTS = 3


class Worker:
    """start() → run(): poll() → handle_* per ready socket or fd → timed steps → close()."""

    def __init__(
        self, config: Config, reload: Callable[[], Config] | None = None, clock: Clock | None = None
    ):
        self.config = config
        self.clock = clock or Clock()
        self.load_config = reload  # SIGHUP: the settings again, as at start
        self.id = config.worker.id
        self.pools = list(config.worker.pool)
        self.slots = usable_slots(config.worker.slots)
        self.size_queue()
        self.heartbeat_s = config.cluster.heartbeat
        self.signals = Signals()
        self.notifier = Notifier()
        self.ctx = zmq.Context.instance()
        self.schedulers: dict[zmq.Socket, str] = {}
        self.seen: dict[str, int] = {}
        self.accepted: list[list] = []  # [job, tick] received since the last `accepted`
        self.accepted_runs: list[list] = []  # [job, tick, attempt], the same runs
        # runs that ended this turn, for every scheduler (each decides the follow-ups):
        # [[run_id, job, status, tick, attempt, exit_code, ended], ...]
        self.ended: list[list] = []
        self.spawners_full = False  # no spawner had room for the next received job
        self.spool = Spool(config.worker.spool, owner=self.id)
        self.poller = zmq.Poller()
        # The runs' pipes sit in one epoll set, polled as one fd: zmq's poll() costs
        # O(fds) a call, and a burst of thousands of runs holds three fds each.
        self.run_fds = select.epoll()
        self.poller.register(self.run_fds.fileno(), zmq.POLLIN)
        self.runs = RunTable(self.run_fds)
        # Spawns go round the spawners (SPAWNERS): each waits in a vfork until its child
        # has exec'd.
        request_ids = itertools.count(1)
        self.spawners = {}
        for spawner in start_spawners(SPAWNERS, request_ids, self.spool.reports_prefix):
            self.spawners[spawner.fileno()] = spawner
            self.poller.register(spawner.fileno(), zmq.POLLIN)
        self.next_spawner = itertools.cycle(list(self.spawners.values()))
        self.next_heartbeat = 0.0
        self.next_resend = 0.0
        self.drain_until: float | None = None  # set once, when a stop is asked for
        self.drain_killed = False
        self.refused_since: float | None = None  # the first of an unbroken run of refusals
        self.refused_last = 0.0
        self.refusal = ""
        self.freed = False  # a slot freed since the last announcement
        self.rejects = Rejects(self.clock.monotonic)
        self.lease_s = lease_s(config.cluster)
        self.stall_bound = stall_bound_s(config.cluster)
        self.stale = Rejects(self.clock.monotonic)  # stale dispatches refused
        # CURVE when [cluster] keys is set: our key, and each server's public key pinned.
        self.security = Security.from_config(config.cluster, self.id)
        self.clean_stop = True  # False when the runs can no longer be watched
        self.mailer = Mailer(self.id, self.clock.monotonic)  # MAILTO: output to sendmail -t
        # (scheduler, job) -> its newest queued run; older ones dropped at its instant
        self.coalesce: Coalescer[str] = Coalescer(self.waits)
        self.answers_wait_until: float | None = None  # the spawners' answers wait (monotonic)
        self.started_now: list[str] = []  # released from the queue since the last `ready`

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Install signal handlers, connect to the schedulers and the sink, tell systemd."""
        self.signals.install()
        self.connect()
        self.notifier.ready(self.status_line())
        log.info("worker %s serving pools %s with %d slots", self.id, self.pools, self.slots)

    def connect(self) -> None:
        cluster = self.config.cluster
        identity = incarnation(self.id)  # one per process: a second one is told apart
        for sid, address in cluster.schedulers.items():
            sock = make_socket(self.ctx, zmq.DEALER, identity=identity)
            # A scheduler that stopped answering (paused, link cut) is redialled.
            keepalive(sock, cluster.heartbeat, 3 * cluster.peer_timeout)
            self.security.connect(sock, sid, address)
            self.schedulers[sock] = sid
            self.seen[sid] = 0
            self.poller.register(sock, zmq.POLLIN)
        self.sink = make_socket(self.ctx, zmq.DEALER, identity=identity)
        self.security.connect(self.sink, "sink", self.config.cluster.sink)
        self.poller.register(self.sink, zmq.POLLIN)
        self.poller.register(self.signals.fd, zmq.POLLIN)

    def run(self) -> int:
        """Serve until drained (or a hard stop); return the exit code."""
        try:
            while not self.drained():
                self.step()
        except SpawnerGone as exc:
            log.error("%s: stopping (its runs can no longer be watched)", exc)
            self.clean_stop = False
            return 1
        except DuplicateWorker as exc:
            log.error("%s: stopping; give each worker its own --id", exc)
            return 2
        return 0

    def close(self) -> None:
        """Kill what still runs, give the sink a moment, say goodbye, close everything."""
        self.notifier.stopping()
        if self.clean_stop and hasattr(self, "sink"):
            self.stop_runs()
        for sock in [*self.schedulers, *([self.sink] if hasattr(self, "sink") else [])]:
            sock.close(linger=0)
        self.run_fds.close()
        if self.clean_stop:
            for spawner in self.spawners.values():
                spawner.close()
        self.security.close()
        log.info("worker %s stopped (%d results left in spool)", self.id, len(self.spool))

    def stop_runs(self) -> None:
        self.spool.send_new(self.sink, self.clock.monotonic())
        for run in list(self.runs.by_id.values()):
            run.begin_kill(self.clock.monotonic(), grace=0.0)
        # Give the sink a moment to acknowledge what finished during the drain.
        deadline = self.clock.monotonic() + 2.0
        while self.spool.pending and self.clock.monotonic() < deadline:
            if self.sink.poll(100):
                self.handle_sink()
        self.announce(to_sink=True)

    def step(self) -> None:
        timeout_ms = self.timeout_ms()
        slept_at = self.clock.monotonic()
        ready = dict(self.poller.poll(timeout_ms))
        if self.clock.monotonic() - (slept_at + timeout_ms / 1000) > self.stall_bound:
            self.fence_parked_runs()  # before anything is released on a stale plan
        self.hold_answers_while_queued(self.clock.monotonic())
        self.handle_ready(ready)
        self.supersede_due(self.clock.now())
        self.release_due_runs()
        self.arm_received()
        self.announce_if_freed()
        now = self.clock.monotonic()
        self.enforce_timeouts(now)
        self.mailer.expire(now)
        self.drain_if_due(now)
        self.heartbeat_if_due(now)
        self.spool.send_new(self.sink, now)  # the turn's records, in as few messages as fit
        self.resend_if_due(now)
        self.notifier.watchdog_if_due(now)

    def drained(self) -> bool:
        """Stop once drained: no run left (a hard stop: at once)."""
        return self.signals.hard_stop or (self.drain_until is not None and not self.runs)

    def begin_drain(self, now: float) -> None:
        """A stop was asked for: take no new jobs, and give the runs drain_timeout to end."""
        self.drain_until = now + self.config.worker.drain_timeout
        log.info("draining: no new jobs; waiting for %d runs", len(self.runs.by_id))
        back = take_all(self.runs.received)  # never started: they go elsewhere
        while self.runs.held:
            run = self.runs.take_held(self.runs.held[0])
            if run is not None and not run.killed_by_us:
                self.unpark(run)
                back.setdefault(run.msg["scheduler"], []).append(run.run_id)
        for sid, run_ids in back.items():
            owner = self.owner_socket(sid)
            if owner is None:
                continue
            for start in range(0, len(run_ids), MAX_ENDED):  # `returned` holds 4,096
                send_nowait(owner, protocol.encode("returned",
                                                   run_ids=run_ids[start:start + MAX_ENDED]))
        self.notifier.status(self.status_line())
        self.announce(to_sink=True)

    def drain_if_due(self, now: float) -> None:
        """Past the drain timeout, kill what still runs (TERM, grace, KILL); the loop stops
        when it is reaped and recorded."""
        if self.drain_until is None or self.drain_killed or now <= self.drain_until:
            return
        log.warning("drain timeout: killing %d runs", len(self.runs.by_id))
        self.drain_killed = True
        for run in self.runs.by_id.values():
            self.kill(run, now)

    def size_queue(self) -> None:
        """The prefetch queue's bound, and how many of it are armed ahead (prefetch.py)."""
        self.prefetch = prefetch_of(self.config.worker.prefetch, self.slots)
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fd_room = 1 << 30 if limit == resource.RLIM_INFINITY else limit - FDS_RESERVED
        self.park_ahead = park_ahead(self.prefetch, self.slots, fd_room // FDS_PER_RUN)

    def armable(self) -> bool:
        """A received job waits and may be armed: a slot is free for it, or one of the
        `park_ahead` parked ahead (the rest of the queue waits unarmed)."""
        return bool(self.runs.received) and len(self.runs.by_id) < self.slots + self.park_ahead

    def timeout_ms(self) -> int:
        if self.armable() and not self.spawners_full:
            return 0
        now = self.clock.monotonic()
        deadlines = [self.next_heartbeat, self.next_resend if self.spool.pending else now + 5]
        deadlines.append(self.notifier.watchdog_due(now))
        for timeout in (self.runs.next_timeout(), self.mailer.next_deadline()):
            if timeout is not None:
                deadlines.append(timeout)
        if self.drain_until is not None and not self.drain_killed:
            deadlines.append(self.drain_until + 0.001)
        if self.answers_wait_until is not None:
            deadlines.append(self.answers_wait_until)
        if self.armable():  # the spawners' answers (polled) or a millisecond make room
            deadlines.append(now + 0.001)
        # Tick instants are wall clock: wake just before, then spin.
        tick = self.runs.next_armed()
        wall = [] if tick is None else [tick - SPIN_S]
        if (superseding := self.coalesce.next_deadline()) is not None:
            wall.append(superseding)
        return self.clock.timeout_ms(wall, deadlines)

    def handle_ready(self, ready: dict) -> None:
        for item in ready:
            if item is self.signals.fd:
                self.handle_signals()
            elif item is self.sink:
                self.handle_sink()
            elif item in self.schedulers:
                self.handle_scheduler(item)
            elif item == self.run_fds.fileno():
                for fd, _ in self.run_fds.poll(0):
                    self.handle_fd(fd)
                self.release_held()  # a freed slot starts the next run before anything else
            elif item in self.spawners and self.answers_wait_until is None:
                self.handle_spawner(self.spawners[item])

    def hold_answers_while_queued(self, now: float) -> None:
        """While runs wait for a slot, leave the spawners' answers (exit statuses, so
        records and `ended`) unread for up to ANSWERS_WAIT_S: a slot's next run then starts
        without a record's work (spool, results, the sink's commit, a scheduler's `ready`)
        beside it on the CPU. Exits are seen meanwhile through the runs' pidfds; a started
        run without one (its answer brings it) ends the wait."""
        runs = self.runs
        waiting = bool(runs.held) and not self.signals.stopping and all(
            runs.by_id[r].pidfd is not None for r in runs.started if r in runs.by_id)
        if self.answers_wait_until is not None:
            if waiting and now < self.answers_wait_until:
                return
            self.answers_wait_until = None
            for fd, spawner in self.spawners.items():
                self.poller.register(fd, zmq.POLLIN)
                self.handle_spawner(spawner)
        elif waiting:
            self.answers_wait_until = now + ANSWERS_WAIT_S
            for fd in self.spawners:
                self.poller.unregister(fd)

    def handle_signals(self) -> None:
        self.signals.drain()
        if self.signals.stopping and self.drain_until is None:
            self.begin_drain(self.clock.monotonic())
        self.reload_if_asked()

    # -- scheduler side -----------------------------------------------------------------

    def handle_scheduler(self, sock: zmq.Socket) -> None:
        sid = self.schedulers[sock]
        dropped = f"dropped message from scheduler {sid}: "

        def rejected(why: str) -> None:
            # What a scheduler sent and we cannot read was most likely a job: it used one
            # of our slots in the scheduler's count, so count it seen (the credit comes back).
            self.seen[sid] += 1
            self.freed = True
            self.rejects(dropped + why)

        returned: list[str] = []
        for kind, msg in receive(sock, ("job", "cancel", "refused", "recall"), rejected):
            if kind == "recall":
                self.recall(sid, msg["run_id"], returned)
                continue
            if kind == "cancel":
                self.cancel(msg["run_id"], msg["reason"], self.clock.monotonic())
                continue
            if kind == "refused":
                self.refused(msg["reason"], self.clock.monotonic())
                continue
            self.seen[sid] += 1
            now = self.clock.now()
            if is_stale(msg["dispatched"], now, self.lease_s):
                self.refuse_stale(msg, sid, now - msg["dispatched"])
                continue
            self.accepted.append([msg["job"], msg["tick"]])
            self.accepted_runs.append([msg["job"], msg["tick"], msg["attempt"]])
            self.queue(msg)
        if returned:
            send_nowait(sock, protocol.encode("returned", run_ids=returned))

    def queue(self, msg: dict) -> None:
        """A received job, armed as soon as a slot is free; beyond the slots it waits in
        the prefetch queue (prefetch.py), where each job keeps one due tick, the newest: an
        older one still waiting (unarmed, or armed and held) when the newer one's instant
        comes is recorded `missed` then (coalesce.py)."""
        runs = self.runs
        instant = msg["tick"] + (msg.get("delay") or 0.0)
        key = (msg["scheduler"], msg["job"])
        for older, tick in self.coalesce.add(key, msg["run_id"], msg["tick"], instant,
                                             self.clock.now()):  # fmt: skip
            self.supersede(older, tick)
        runs.receive(msg)
        if len(runs) > self.slots:  # queued: schedulers learn it this turn (recalls)
            self.freed = True

    def waits(self, run_id: str) -> bool:
        """The run is queued here and has not started: received, or armed and held."""
        return run_id in self.runs.held or any(m["run_id"] == run_id for m in self.runs.received)

    def supersede_due(self, now: float) -> None:
        for older, tick in self.coalesce.due(now):
            self.supersede(older, tick)

    def supersede(self, run_id: str, tick: float) -> None:
        """Drop a waiting run a newer tick of its job superseded: recorded `missed`."""
        msg = self.runs.take_received(run_id)
        if msg is None:
            run = self.runs.take_held(run_id)
            if run is None:
                return
            self.unpark(run)
            msg = run.msg
        self.finished(run_record(msg, self.id, status="missed", stderr_tail=(
            f"tick {tick:.3f} came before a slot did (at most one tick of a job waits)")))

    def recall(self, sid: str, run_id: str, returned: list[str]) -> None:
        """A scheduler asks back a queued job of its own: returned if it has not started
        (a held one's parked shell is told to exit: it reads end of file on its stdin)."""
        msg = next((m for m in self.runs.received if m["run_id"] == run_id), None)
        run = self.runs.by_id.get(run_id) if msg is None else None
        # armed and not released: held, or parked before its instant (the whole queue is
        # armed ahead, so a job listed as received is armed by the time its recall comes:
        # left alone, it waited for the recall sent again a second later)
        parked = run is not None and run.go is not None and run_id not in self.runs.started
        owner = msg["scheduler"] if msg is not None else run.msg["scheduler"] if parked else None
        if owner != sid:
            return  # started meanwhile (or not its run): its record will come
        if msg is not None:
            self.runs.received.remove(msg)
        else:
            self.runs.take_held(run_id)
            self.unpark(run)
            run.killed_by_us = True  # never released when its instant comes (release_due_runs)
        returned.append(run_id)
        self.freed = True

    def unpark(self, run: Run | None) -> None:
        """A held run given back: its shell exits unreleased, and its end records nothing."""
        if run is not None and run.go is not None:
            os.close(run.go)
            run.go = None
            self.runs.unrecorded.add(run.run_id)

    def refuse_stale(self, msg: dict, sid: str, age: float) -> None:
        """A dispatch past its lease (its sender or we were stalled, or a link held it):
        its tick may have moved to another scheduler meanwhile, so it is not run (fence.py)."""
        why = (f"stale dispatch: sent by scheduler {sid} {age:.2f}s ago, past the "
               f"{self.lease_s:.2f}s lease; not run")  # fmt: skip
        self.stale(why, "stale_dispatch")  # counted, logged at most once per interval
        self.refuse(msg, why)

    def refused(self, reason: str, now: float) -> None:
        """A scheduler says our id is a live worker's: wait out a restart's overlap, then
        stop with the reason (exit 2 under systemd: RestartPreventExitStatus)."""
        if self.refused_since is None or now - self.refused_last > 3 * self.heartbeat_s:
            self.refused_since = now
            log.warning("%s; waiting for it to go silent", reason)
        self.refused_last, self.refusal = now, reason
        if now - self.refused_since > REFUSED_FOR_TIMEOUTS * self.config.cluster.peer_timeout:
            raise DuplicateWorker(reason)

    def cancel(self, run_id: str, reason: str, now: float) -> None:
        """The scheduler wants the run gone (overlap = replace): kill its group, record `killed`."""
        queued = self.runs.take_received(run_id)
        if queued is not None:  # received, not yet armed: it never starts
            why = f"cancelled: {reason}"
            self.finished(run_record(queued, self.id, status="killed", stderr_tail=why))
            return
        run = self.runs.by_id.get(run_id)
        if run is None or run.cancelled:
            log.info("cancel of run %s: not running here (it may just have ended)", run_id)
            return
        log.warning("run %s of %s cancelled: %s", run_id, run.msg["job"], reason)
        run.cancelled = reason
        self.kill(run, now)

    def fence_parked_runs(self) -> None:
        """We were stalled (SIGSTOP, a starved host) past the stall bound: a scheduler may
        have taken us for dead meanwhile and dispatched our parked runs elsewhere (fence.py).
        None of them is released: each is recorded `refused`, never run, and its scheduler
        dispatches it again (a refused run never started)."""
        now_mono = self.clock.monotonic()
        why = "fenced: the worker was stalled past the stall bound; its parked runs are not run"
        for msg in list(self.runs.received):
            self.runs.received.remove(msg)
            self.refuse(msg, why)
        held = [(0.0, self.runs.by_id.get(run_id)) for run_id in self.runs.held]
        self.runs.held.clear()
        while held or (due := self.runs.pop_armed(float("inf"))) is not None:
            run = held.pop()[1] if held else due[1]
            if run is None or run.killed_by_us:
                continue
            self.stale(why, "stale_release")
            run.fenced = why
            self.kill(run, now_mono)

    def kill(self, run: Run, now: float) -> None:
        """SIGTERM the run's group now, SIGKILL it after the grace (see enforce_timeouts)."""
        run.begin_kill(now, KILL_GRACE_S)
        self.runs.add_timeout(run.kill_at, run)

    def tell_accepted(self) -> None:
        """Tell every scheduler which ticks we took: if their owner dies before its claim
        reaches the others, this is how the next owner knows not to fire them again. (In
        a turn that announces, the `ready` carries them instead.)"""
        for start in range(0, len(self.accepted), MAX_PAIRS):
            frame = protocol.encode("accepted", worker=self.id,
                                    ticks=self.accepted[start:start + MAX_PAIRS],
                                    runs=self.accepted_runs[start:start + MAX_PAIRS])  # fmt: skip
            for other in self.schedulers:
                send_nowait(other, frame)
        self.accepted, self.accepted_runs = [], []

    def arm_received(self) -> None:
        """Arm received jobs for at most ARM_BUDGET_S, releasing runs as their ticks come;
        stop for this turn when every spawner has a socket's worth to do."""
        until = self.clock.monotonic() + ARM_BUDGET_S
        self.spawners_full = False
        received, running = self.runs.received, self.runs.by_id
        armed_at_most = self.slots + self.park_ahead
        while received and len(running) < armed_at_most and self.clock.monotonic() < until:
            if not self.arm(received[0]):
                self.spawners_full = True
                return
            received.popleft()
            self.release_due_runs()

    def arm(self, msg: dict) -> bool:
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
        self.runs.add(run)
        return True

    def refuse(self, msg: dict, reason: str) -> None:
        self.finished(run_record(msg, self.id, status="refused", stderr_tail=reason))

    def release_due_runs(self) -> None:
        """Release every armed run whose tick has come, spinning the last stretch, while a
        slot is free: the others wait held, in order, for the next slot that frees."""
        runs = self.runs
        self.release_held()
        while (due := runs.pop_armed(self.clock.now() + SPIN_S)) is not None:
            tick, run = due
            if run is None or run.killed_by_us:  # cancelled while parked: never runs
                continue
            if len(runs.started) >= self.slots:
                runs.held.append(run.run_id)
                self.freed = True  # schedulers learn it waits (queued: never started)
                continue
            self.clock.spin_until(tick)
            self.release(run)

    def release_held(self) -> None:
        """Release held runs (due, parked, waiting for a slot) into the free slots."""
        runs = self.runs
        while runs.held and len(runs.started) < self.slots:
            run = runs.by_id.get(runs.held.popleft())
            if run is not None and not run.killed_by_us:  # cancelled while held: never runs
                self.release(run)
                # It was `queued` in our last `ready`: this turn tells it started, or a
                # scheduler finding us dead would dispatch it again (the nemesis saw one
                # such duplicate at a worker SIGKILL). A `started` of its id does, unless
                # the turn sends a `ready` anyway: a `ready` per release, with its lists,
                # cost 1,000 jobs/s at 2 slots ~15% of the runs started.
                self.started_now.append(run.run_id)

    def release(self, run: Run) -> None:
        self.coalesce.forget((run.msg["scheduler"], run.msg["job"]), run.run_id)  # started
        run.release(self.clock.now(), self.clock.monotonic())
        self.runs.released(run)

    def handle_fd(self, fd: int) -> None:
        """Output to read, or (a pidfd) a run's process has exited: its slot is free."""
        if fd in self.runs.by_pidfd:
            self.runs.process_exited(fd, self.clock.now())
            return
        run = self.runs.by_fd.get(fd)
        if run is not None and not run.read_pipe(fd):
            self.runs.close_pipe(fd)

    def handle_spawner(self, spawner: Spawner) -> None:
        """Pids of runs the spawner started (or why it could not), and exit statuses."""
        for answer in spawner.replies():
            if self.mailer.take(answer):
                continue
            if "id" in answer:
                run = self.runs.spawn_answered(answer["id"], answer.get("pid"),
                                               answer.get("at", 0), answer.get("pidfd"))
                if run is not None and "error" in answer:
                    self.spawn_failed(run, answer["error"])
            elif (run := self.runs.reaped(answer["pid"], answer["status"])) is not None:
                rec = self.runs.forget(run, self.clock.now())
                if run.run_id in self.runs.unrecorded:  # given back: it never started here
                    self.runs.unrecorded.discard(run.run_id)
                    self.freed = True
                    continue
                self.finished(rec)
                self.mail(run.msg, rec)

    def mail(self, msg: dict, rec: dict) -> None:
        """Cron's MAILTO: the run's output to sendmail, started by a spawner (mail.py)."""
        self.mailer.send(msg, rec, itertools.islice(self.next_spawner, len(self.spawners)))

    def spawn_failed(self, run: Run, error: str) -> None:
        log.warning("run %s of %s refused: %s", run.run_id, run.msg["job"], error)
        self.runs.forget(run, self.clock.now())
        self.refuse(run.msg, error)

    def finished(self, rec: dict) -> None:
        """A run's end (or a job that never ran): spool and send its record, tell its
        scheduler, announce the freed slot."""
        self.report(rec)
        self.tell_finished(rec)
        self.freed = True

    def tell_finished(self, rec: dict) -> None:
        """Tell every scheduler the run ended, in the `ready` that ends this turn (one
        message for every run that ended in it): its own frees the run's overlap state and
        slot, and each decides its retry, chained children and hook, so a successor knows
        them when the run's scheduler died (followups.py)."""
        self.ended.append([rec["run_id"], rec["job"], rec["status"], rec["tick"],
                           rec["attempt"], rec["exit_code"],
                           rec["finished"] or self.clock.now()])  # fmt: skip

    def owner_socket(self, scheduler_id: str) -> zmq.Socket | None:
        return next((s for s, sid in self.schedulers.items() if sid == scheduler_id), None)

    def enforce_timeouts(self, now: float) -> None:
        while (due := self.runs.pop_timeout(now)) is not None:
            _, run = due
            if run is None:
                continue
            if run.kill_at is not None:
                if now >= run.kill_at:  # else a timeout that came after a cancel or drain kill
                    run.signal_group(signal.SIGKILL)
            elif run.msg["on_timeout"] == "kill":
                log.warning("run %s of %s timed out: killing its group", run.run_id, run.msg["job"])
                run.timed_out = True
                self.kill(run, now)
            else:
                log.warning(
                    "run %s of %s is past its timeout (on_timeout=alert)",
                    run.run_id,
                    run.msg["job"],
                )
                run.timed_out = True

    # -- announcements and results ------------------------------------------------------

    def announce(self, to_sink: bool = False) -> None:
        """Tell every scheduler how many slots are free right now, with the runs of its own
        that ended and the ticks we took since the last time; the sink (dashboard, metrics)
        hears it on heartbeats and at a drain, not every turn (measured: `ready` was half
        of a 2-slot worker's sends, 3.2 of ~6 per job)."""
        running = self.runs.by_id
        free, room = capacity(self.slots, self.prefetch, len(running), len(self.runs.received))
        stopping = self.signals.stopping
        slots = {
            "worker": self.id,
            "pools": self.pools,
            "slots": self.slots,
            "free": 0 if stopping else free,
            "room": 0 if stopping else room,
            "queued": self.runs.waiting()[:MAX_RUNNING_LISTED],
            "running": list(running)[:MAX_RUNNING_LISTED],
            "running_jobs": [r.msg["job"] for r in running.values()][:MAX_RUNNING_LISTED],
            # not started yet: a scheduler that finds us dead re-dispatches these elsewhere
            "parked": self.runs.parked()[:MAX_RUNNING_LISTED],
            "spool": len(self.spool),
            "handshake_failures": self.security.handshake_failures,
            "mail_failures": self.mailer.failures,
        }
        self.freed, self.started_now = False, []
        ticks, self.accepted = self.accepted[:MAX_PAIRS], self.accepted[MAX_PAIRS:]
        runs, self.accepted_runs = self.accepted_runs[:MAX_PAIRS], self.accepted_runs[MAX_PAIRS:]
        ended, self.ended = self.ended, []
        batched: dict[str, list] = {"ended": ended[:MAX_ENDED]} if ended else {}
        if ticks:
            batched.update(ticks=ticks, runs=runs)
        for sock, sid in self.schedulers.items():
            for start in range(MAX_ENDED, len(ended), MAX_ENDED):  # more than a turn holds
                send_nowait(sock, protocol.encode("ready", seen=self.seen[sid], **slots,
                                                  ended=ended[start:start + MAX_ENDED]))
            send_nowait(sock, protocol.encode("ready", seen=self.seen[sid], **slots, **batched))
        self.tell_accepted()  # any beyond MAX_PAIRS
        if to_sink:
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
            self.size_queue()
            log.info("SIGHUP: serving pools %s with %d slots", self.pools, self.slots)
            self.announce(to_sink=True)
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        if self.signals.stopping:
            return f"draining {len(self.runs)} run{'' if len(self.runs) == 1 else 's'}"
        return f"pools {','.join(self.pools)}, {self.slots} slots"

    def announce_if_freed(self) -> None:
        """Once per turn of the loop, however many runs ended in it: a burst of thousands
        of results must not cost thousands of announcements. A turn that freed nothing
        still tells the ticks it took (`accepted`)."""
        if self.freed:
            self.announce()
            if self.signals.stopping:
                self.notifier.status(self.status_line())
            return
        if self.started_now:
            self.tell_started()
        if self.accepted:
            self.tell_accepted()

    def tell_started(self) -> None:
        """Tell every scheduler which queued runs started this turn (see release_held)."""
        started, self.started_now = self.started_now, []
        for start in range(0, len(started), MAX_ENDED):
            frame = protocol.encode("started", worker=self.id,
                                    run_ids=started[start:start + MAX_ENDED])  # fmt: skip
            for sock in self.schedulers:
                send_nowait(sock, frame)

    def heartbeat_if_due(self, now: float) -> None:
        if now >= self.next_heartbeat:
            self.security.redial_failed(now)
            self.announce(to_sink=True)
            self.next_heartbeat = now + self.heartbeat_s

    def report(self, rec: dict) -> None:
        """Spool the record now; it goes to the sink with the turn's others (send_new)."""
        self.spool.add(rec)

    def resend_if_due(self, now: float) -> None:
        if now < self.next_resend or not self.spool.pending:
            return
        self.next_resend = now + 1.0
        self.spool.send_turn(self.sink, self.spool.due(now), now)

    def handle_sink(self) -> None:
        self.spool.take_acks(self.sink, self.rejects)


class DuplicateWorker(Exception):
    """Another live worker has our id (spec §7, Identity)."""


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
    slots = slots_option(args)
    config = config.with_overrides("worker", id=args.get("--id"), pool=pools, slots=slots)
    role = Roles(config.cluster.schedulers, config.clients).role_of(config.worker.id)
    if role != "worker":
        raise ConfigError(f"worker id {config.worker.id!r} is the name of a {role} key: "
                          "give the worker an id of its own (--id)")  # fmt: skip
    return config


def cmd_worker(args: dict) -> int:
    config = worker_config(args)
    setup_logging(f"zcron-worker[{config.worker.id}]")
    check_secure(config, f"worker {config.worker.id}")
    # per id: workers of one host may share a spool directory, never an id
    lock = hold(config.worker.spool, f"worker {config.worker.id}", f"lock-{config.worker.id}")
    try:
        return run_daemon(Worker(config, reload=lambda: worker_config(args)))
    finally:
        os.close(lock)
