"""The worker's run table: every run it holds, in one state, with every index to it.

A run goes received → armed → released → exited → reported. Received jobs wait in
order to be armed; from arming on, the run is indexed by run id, by its output pipes, by
its spawn request (until the spawner answers), by its pid (until reaped), by its pidfd
(until the process exits: its slot frees then, before the spawner's exit status comes),
and on the armed and timeout heaps. `forget` is the one way out: it drops every index.
"""

from __future__ import annotations

import heapq
import os
import select
from collections import deque

from zcron.process import Run

RECEIVED, ARMED, RELEASED, EXITED, REPORTED = (
    "received", "armed", "released", "exited", "reported",
)  # fmt: skip


class RunTable:
    """Runs by state and index; heap entries of forgotten runs are skipped when popped."""

    def __init__(self, epoll: select.epoll) -> None:
        self.epoll = epoll  # the runs' output pipes, polled as one fd
        self.received: deque[dict] = deque()  # jobs received, not yet armed
        self.by_id: dict[str, Run] = {}
        self.by_fd: dict[int, Run] = {}
        self.by_request: dict[int, Run] = {}  # spawn request -> its run, until answered
        self.by_pid: dict[int, Run] = {}  # spawned and not yet reaped
        self.by_pidfd: dict[int, Run] = {}  # a pidfd polled until its process exits
        self.armed: list[tuple[float, str]] = []  # (tick, run id): parked until the tick
        self.timeouts: list[tuple[float, str]] = []  # (monotonic deadline, run id)
        # Prefetch (zcron/prefetch.py): armed runs whose instant has come, waiting for a
        # slot (never started), in order; the runs released and not yet forgotten (the
        # slots in use); runs given back while parked, whose end records nothing.
        self.held: deque[str] = deque()
        self.started: set[str] = set()
        self.unrecorded: set[str] = set()

    def __len__(self) -> int:
        """Slots in use: runs armed or running, and jobs received but not yet armed."""
        return len(self.by_id) + len(self.received)

    def receive(self, msg: dict) -> None:
        self.received.append(msg)

    def take_received(self, run_id: str) -> dict | None:
        """Remove a received job that is not armed yet; None if there is none."""
        msg = next((m for m in self.received if m["run_id"] == run_id), None)
        if msg is not None:
            self.received.remove(msg)
        return msg

    def add(self, run: Run) -> None:
        """An armed run: parked until its tick, waiting for its spawner's answer."""
        run.state = ARMED
        self.by_id[run.run_id] = run
        self.by_request[run.request] = run
        for fd in run.pipes():
            self.by_fd[fd] = run
            self.epoll.register(fd, select.EPOLLIN)
        # released at its tick, or its jitter delay after it
        heapq.heappush(self.armed, (run.msg["tick"] + run.msg.get("delay", 0.0), run.run_id))

    def waiting(self) -> list[str]:
        """Run ids never started that wait for a slot: received, or armed and due (held)."""
        return [m["run_id"] for m in self.received] + list(self.held)

    def take_held(self, run_id: str) -> Run | None:
        """Take a held run back (it is never released); None if it is not held."""
        if run_id not in self.held:
            return None
        self.held.remove(run_id)
        return self.by_id.get(run_id)

    def parked(self) -> list[str]:
        """Run ids not released yet: received, or armed and waiting for their instant."""
        waiting = [m["run_id"] for m in self.received]
        return waiting + [r.run_id for r in self.by_id.values() if r.state == ARMED]

    def next_armed(self) -> float | None:
        return self.armed[0][0] if self.armed else None

    def pop_armed(self, until: float) -> tuple[float, Run | None] | None:
        """The next armed (tick, run) due by `until` (run None: forgotten meanwhile)."""
        if not self.armed or self.armed[0][0] > until:
            return None
        tick, run_id = heapq.heappop(self.armed)
        return tick, self.by_id.get(run_id)

    def released(self, run: Run) -> None:
        run.state = RELEASED
        self.started.add(run.run_id)
        if run.deadline is not None:
            self.add_timeout(run.deadline, run)

    def add_timeout(self, at: float, run: Run) -> None:
        heapq.heappush(self.timeouts, (at, run.run_id))

    def pop_timeout(self, now: float) -> tuple[float, Run | None] | None:
        """The next timeout due by `now` (run None: forgotten meanwhile)."""
        if not self.timeouts or self.timeouts[0][0] > now:
            return None
        at, run_id = heapq.heappop(self.timeouts)
        return at, self.by_id.get(run_id)

    def next_timeout(self) -> float | None:
        return self.timeouts[0][0] if self.timeouts else None

    def spawn_answered(self, request: int, pid: int | None, at: float = 0.0,
                       pidfd: int | None = None) -> Run | None:  # fmt: skip
        """The spawner answered a request: it started the process at `at`, or (pid None)
        it could not. `pidfd` (ours now) is polled with the pipes: readable at the exit.
        None for a request we no longer know (its pidfd is closed)."""
        run = self.by_request.pop(request, None)
        if run is None:
            if pidfd is not None:
                os.close(pidfd)
            return None
        if pid is not None:
            run.spawned(pid, at)
            self.by_pid[pid] = run
        if pidfd is not None:
            run.pidfd = pidfd
            self.by_pidfd[pidfd] = run
            self.epoll.register(pidfd, select.EPOLLIN)
        return run

    def process_exited(self, pidfd: int, now: float) -> Run | None:
        """A pidfd is readable: its process has exited (its status comes with the reap).
        The run's slot frees now; its record waits for the status."""
        run = self.by_pidfd.get(pidfd)
        if run is not None:
            run.exited_at = now
            self.close_pidfd(run)
            self.started.discard(run.run_id)
        return run

    def close_pidfd(self, run: Run) -> None:
        if run.pidfd is None:
            return
        self.by_pidfd.pop(run.pidfd, None)
        self.epoll.unregister(run.pidfd)
        os.close(run.pidfd)
        run.pidfd = None

    def reaped(self, pid: int, wait_status: int) -> Run | None:
        run = self.by_pid.pop(pid, None)
        if run is not None:  # its pidfd and slot go with `forget`, which always follows
            run.exited(wait_status)
            run.state = EXITED
        return run

    def close_pipe(self, fd: int) -> None:
        """Stop watching one output pipe (at its end) and close it."""
        run = self.by_fd.pop(fd)
        self.epoll.unregister(fd)
        run.close_pipe(fd)

    def forget(self, run: Run, now: float) -> dict:
        """Drop the run from every index and release its fds; its record."""
        for fd in run.pipes():
            self.by_fd.pop(fd, None)
            try:
                self.epoll.unregister(fd)
            except FileNotFoundError:
                pass  # never registered
        self.close_pidfd(run)
        self.by_id.pop(run.run_id, None)
        self.started.discard(run.run_id)
        if run.run_id in self.held:  # cancelled while held
            self.held.remove(run.run_id)
        self.by_request.pop(run.request, None)
        if run.pid is not None:
            self.by_pid.pop(run.pid, None)
        rec = run.finish(now)
        run.state = REPORTED
        return rec
