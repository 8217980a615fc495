"""The worker's job processes are started, and reaped, by a small process of its own.

A process started by fork or posix_spawn gets a copy of its parent's file table, and its
exec closes that copy again. A worker at 1,000 jobs/s holds thousands of pipes for its
parked and running jobs; that copy cost every job's process ~75 ns per open fd (0.3 ms of
CPU at 4,000 fds, a third of what the job itself costs), and the worker's loop stood
still in each vfork until the child had exec'd. The spawner holds almost no fds: the
worker passes each run's three pipe ends with the request (SCM_RIGHTS) and goes on; the
spawner answers with the pid, and with the exit status once the process has ended (the
processes are its children, so it is the one that can wait for them).

Messages on the socketpair (SOCK_SEQPACKET, one marshal value per packet; a private pipe
between the worker and its own child, not the network, so not in protocol.py):
  worker → spawner  {"id", "argv", "env", "user": [uid, gid, groups] | None, "pidfd": bool,
                    "record": the run's record skeleton | None} + 3 fds (the record, for a
                    run that ends after the worker died: spawner_process.Ledger)
  spawner → worker  a list of answers: {"id", "pid", "at", "pidfd"} or {"id", "error"} for a
                    request, and later {"pid", "status"} (a wait status) once the process
                    has exited; "pidfd" (asked for with "pidfd": true) is the index of a
                    pidfd among the packet's fds (SCM_RIGHTS)
When the worker's end closes with processes still running (the worker was SIGKILLed or
crashed: a draining worker waits for its runs first), the spawner ends their process
groups (TERM, KILL after a grace) before it exits: the scheduler records those runs
`lost` and may retry them or start the next tick of an `overlap = forbid` job, and a run
that outlived its worker would make both records and overlap untrue.

A run's slot frees at its process's exit, seen through a pidfd the spawner opens before it
can reap the process (so it names no other) and passes with the pid: the worker polls it
with the run's pipes. Waiting for the spawner's exit status instead put the spawner's
SIGCHLD turn and a packet between a run's end and the next run's start: at 2 slots and
1,000 jobs/s, release to the worker's news of the exit was 2.5 ms p50 of a 3 ms cycle
(the bare shell's own: 0.3 ms), and the spawner's vforks delay its turns. The record
still waits for the status.

The spawner process runs zcron/spawner_process.py alone, in an interpreter started with
`-I -S` (no site, none of the worker's imports), and the first spawner forks the others.
"""

from __future__ import annotations

import marshal
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from zcron.spawner_process import MAX_PACKET, PIDFDS_PER_PACKET, REPORTS_ENV

# What the spawner process runs: its module alone, found beside this one (-I ignores
# PYTHONPATH, -S skips site and the venv's packages: nothing else is imported).
_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from zcron.spawner_process import main; main()")


class SpawnerBusy(Exception):
    """The spawner has a socket's worth of requests to serve: ask again later."""


class SpawnerGone(Exception):
    """The spawner process has exited: no run can be started or reaped any more."""


class Spawner:
    """The worker's end: send spawn requests, read back pids, errors and exit statuses."""

    def __init__(
        self, sock: socket.socket, proc: subprocess.Popen | None, request_ids: Iterator[int]
    ) -> None:
        self.sock = sock
        self.proc = proc  # the process we started; None for a spawner it forked
        self.sock.setblocking(False)
        self.request_ids = request_ids  # shared by the worker's spawners: ids are unique

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, argv: list[str], env: dict[str, str], fds: list[int],
              user: tuple[int, int, list[int]] | None,
              record: dict | None = None, pidfd: bool = False) -> int:  # fmt: skip
        """Ask for a process (fds become its stdin, stdout, stderr); the request's id. Raise
        SpawnerBusy when the socket is full: the worker must not stand still meanwhile (a
        worker that stops announcing itself is taken for dead, its runs for lost).
        `pidfd`: the answer brings a pidfd of the process, readable once it has exited."""
        request_id = next(self.request_ids)
        # record: the run's record skeleton, for the spawner's report if we die (Ledger)
        packet = marshal.dumps({"id": request_id, "argv": argv, "env": env, "user": user,
                                "record": record, "pidfd": pidfd})  # fmt: skip
        try:
            socket.send_fds(self.sock, [packet], fds)
        except BlockingIOError:
            raise SpawnerBusy from None
        except OSError as exc:
            raise SpawnerGone(f"spawner unreachable: {exc}") from None
        return request_id

    def replies(self) -> list[dict]:
        """Every answer waiting on the socket; raise SpawnerGone if the spawner has exited.
        An answer's "pidfd" is an fd of ours now (the caller closes it)."""
        out = []
        while True:
            try:
                packet, fds, _, _ = socket.recv_fds(self.sock, MAX_PACKET, PIDFDS_PER_PACKET)
            except BlockingIOError:
                return out
            if not packet:
                status = self.proc.poll() if self.proc is not None else "forked"
                raise SpawnerGone(f"spawner exited ({status})")
            answers = marshal.loads(packet)
            for answer in answers:
                if "pidfd" in answer:
                    answer["pidfd"] = fds[answer["pidfd"]]
            out += answers

    def close(self) -> None:
        """Let the spawner exit (it sees the socket close) and wait for it (one it forked
        is reaped by the first)."""
        self.sock.close()
        if self.proc is None:
            return
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_spawners(count: int, request_ids: Iterator[int], reports: str | None = None
                   ) -> list[Spawner]:  # fmt: skip
    """`count` spawners in one light interpreter: the first is our child, it forks the rest.
    `reports`: where they write the runs that ended after we died (the spool directory)."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(count)]
    theirs = [pair[1].fileno() for pair in pairs]
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _BOOT, _ROOT, *map(str, theirs)],
        pass_fds=theirs,
        stdin=subprocess.DEVNULL,
        env={**os.environ, REPORTS_ENV: reports} if reports else None,
    )
    for _, their in pairs:
        their.close()
    return [Spawner(ours, proc if n == 0 else None, request_ids)
            for n, (ours, _) in enumerate(pairs)]  # fmt: skip
