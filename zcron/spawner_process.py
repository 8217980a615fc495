"""The spawner process itself: started light, it starts and reaps the worker's job processes.

The worker's end is zcron/spawner.py (why a spawner exists, and its messages). This module
is what the spawner process runs, and it imports only these few built-in modules: the
worker starts it as `python -I -S` (no site, no venv's packages, nothing of zcron but
this), and the first spawner forks the others, so their pages are shared until written.
Measured on an idle worker: 7.0 MiB PSS per spawner before (a full interpreter with site,
msgpack and subprocess), ~2.2 MiB each now.

Packets are marshal, not msgpack (which is not built in): the socketpair is private to
the worker and its own child, both of the same trust, never the network.
"""

from __future__ import annotations

import array
import marshal
import os
import select
import signal
import socket
import sys
import time

MAX_PACKET = 1 << 20  # a request holds the job's command and environment (each capped)
# Answers go back a turn's worth to a packet: a send and a wake-up of the worker per turn,
# not per spawn and per exit (~40 bytes each, so a packet stays well inside the buffer).
REQUESTS_PER_TURN = 64
ANSWERS_PER_PACKET = 1024
PIDFDS_PER_PACKET = 200  # SCM_RIGHTS takes at most 253 fds a message (SCM_MAX_FD)
ORPHAN_GRACE_S = 2.0  # TERM to KILL for the runs of a worker that died
# Exits told to the worker this recently may not have reached its spool when it died (the
# packet sat unread in the socket): they are reported again with the orphans' (a record
# the worker did spool is kept instead: one record per run id).
RECENT_S = 10.0
UNRELEASED = 125  # a parked shell's exit when its stdin closed before release (process.py)
# Where those reports go: a path prefix in the worker's spool directory, naming the worker
REPORTS_ENV = "ZCRON_SPAWNER_REPORTS"
# Ignored signals survive exec, and a shell cannot trap what it found ignored: Python
# ignores SIGPIPE and SIGXFSZ, the spawner INT and TERM. Jobs get cron's defaults.
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)


def serve(sock: socket.socket) -> None:
    """Start what is asked, report pids and exits, until the worker's end closes."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd is written
    # The worker decides when to stop (it drains first): a Ctrl-C meant for it is not ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    children: set[int] = set()  # started and not reaped: each leads its own process group
    ledger = Ledger()
    while True:
        answers: list[dict] = []
        for fd, _ in poller.poll():
            if fd == wake_r:
                _drain(wake_r)
            elif not handle_requests(sock, answers, ledger):
                ledger.note(answers)
                ledger.report(end_orphans(children | {a["pid"] for a in answers if "pid" in a}))
                return
        report_exits(answers)
        ledger.note(answers)
        children.update(a["pid"] for a in answers if "status" not in a and "pid" in a)
        children.difference_update(a["pid"] for a in answers if "status" in a)
        if not _send(sock, answers):
            ledger.report(end_orphans(children))
            return


class Ledger:
    """The record skeleton of each run started (the worker sends it with the request), so
    that a run that ended on its own after its worker died is still recorded truly: the
    nemesis saw 5 runs in 75 s that ran to their end recorded `lost`, their worker SIGKILLed
    between the exit and its spool. Written to the worker's spool directory, which the
    restarted worker reads (spool.py); runs we end here (TERM, KILL) stay `lost`."""

    def __init__(self) -> None:
        self.prefix = os.environ.get(REPORTS_ENV)
        self.requested: dict[int, dict] = {}  # request id -> skeleton, until its pid
        self.running: dict[int, dict] = {}  # pid -> skeleton with "spawned"
        # (monotonic, final record) told the worker: ~10,000 at 1,000 runs/s, trimmed once a
        # turn (a deque would import collections into this light process)
        self.recent: list[tuple[float, dict]] = []

    def note(self, answers: list[dict]) -> None:
        now = time.monotonic()
        for answer in answers:
            if "id" in answer:
                rec = self.requested.pop(answer["id"], None)
                if rec is not None and "pid" in answer:
                    self.running[answer["pid"]] = {**rec, "spawned": answer["at"]}
            elif "status" in answer:
                rec = self.ended(answer["pid"], answer["status"])
                if rec is not None:
                    self.recent.append((now, rec))
        stale = 0
        while stale < len(self.recent) and self.recent[stale][0] < now - RECENT_S:
            stale += 1
        del self.recent[:stale]

    def ended(self, pid: int, status: int) -> dict | None:
        """The record of a run that exited on its own; None for one signalled, one never
        released, or a process that was no run (mail)."""
        rec = self.running.pop(pid, None)
        if rec is None or not os.WIFEXITED(status) or os.WEXITSTATUS(status) == UNRELEASED:
            return None
        code = os.WEXITSTATUS(status)
        spawned = rec.pop("spawned")
        # released at its instant (tick plus jitter delay), or at once if armed later
        started = max(spawned, rec["tick"] + (rec.get("delay") or 0.0))
        return {**rec, "status": "ok" if code == 0 else "failed", "exit_code": code,
                "started": started, "finished": max(time.time(), started),
                "stderr_tail": "zcron: its worker died before it recorded this run (its end "
                               "was reported by the spawner; the output is lost)"}  # fmt: skip

    def report(self, exited: dict[int, int]) -> None:
        """Write the runs that ended on their own since the worker died, or just before."""
        records = [rec for _, rec in self.recent]
        records += [rec for pid, status in exited.items()
                    if (rec := self.ended(pid, status)) is not None]  # fmt: skip
        if not records or not self.prefix:
            return
        name = f"{self.prefix}{os.getpid()}-{time.time_ns():x}"
        tmp = name + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, marshal.dumps(records))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name + ".rep")
        except OSError as exc:
            os.write(2, f"zcron spawner: cannot report {len(records)} runs: {exc}\n".encode())


def end_orphans(children: set[int]) -> dict[int, int]:
    """The worker is gone: TERM every running run's group, KILL what is left after the
    grace, and reap them (a child stuck in the kernel is left to init after a second).
    The wait statuses of those reaped, by pid."""
    exited: dict[int, int] = {}
    for sig, wait_s in ((signal.SIGTERM, ORPHAN_GRACE_S), (signal.SIGKILL, 1.0)):
        for pid in children:
            try:
                os.killpg(pid, sig)
            except OSError:
                pass  # the group has ended
        deadline = time.monotonic() + wait_s
        while children and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return exited
            if pid:
                children.discard(pid)
                exited[pid] = status
            else:
                time.sleep(0.01)
    return exited


def handle_requests(sock: socket.socket, answers: list[dict], ledger: Ledger) -> bool:
    """Serve the waiting requests (at most a turn's worth, so exits are reported meanwhile);
    False once the worker's end has closed."""
    for _ in range(REQUESTS_PER_TURN):
        try:
            packet, fds = _receive_request(sock)
        except BlockingIOError:
            return True
        except ConnectionError:  # a SIGKILLed worker's end resets rather than closes
            return False
        if not packet:
            return False
        try:
            request = marshal.loads(packet)
            if request.get("record") is not None:
                ledger.requested[request["id"]] = request["record"]
            answers.append(spawn_one(request, fds))
        finally:
            for fd in fds:
                os.close(fd)
    return True


def _receive_request(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One packet and its fds, without waiting (socket.recv_fds drops its flags in 3.11)."""
    fd_bytes = socket.CMSG_LEN(3 * array.array("i").itemsize)
    packet, ancillary, _, _ = sock.recvmsg(MAX_PACKET, fd_bytes, socket.MSG_DONTWAIT)
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return packet, list(fds)


def spawn_one(request: dict, fds: list[int]) -> dict:
    argv, env, user = request["argv"], request["env"], request["user"]
    try:
        if user is None:
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(fds)],
            )
        else:
            pid = _fork_as(user, argv, env, fds)
    except OSError as exc:
        return {"id": request["id"], "error": f"cannot start {argv[0]!r}: {exc.strerror or exc}"}
    answer = {"id": request["id"], "pid": pid, "at": time.time()}
    if request.get("pidfd"):
        # Opened before we reap it, so it can only name this process: the worker polls it
        # and frees the run's slot the moment it exits, without waiting for our SIGCHLD
        # turn and packet (measured at 2 slots, 1,000 jobs/s: exit to worker 2.5 ms p50
        # through us; see spawner.py).
        try:
            answer["pidfd"] = os.pidfd_open(pid)
        except OSError:
            pass  # the worker falls back on our exit status
    return answer


def _fork_as(user: list, argv: list[str], env: dict[str, str], fds: list[int]) -> int:
    """fork, switch user, exec: safe here, as the spawner has a single thread."""
    uid, gid, groups = user
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        for n, fd in enumerate(fds):
            os.dup2(fd, n)
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        for signum in DEFAULT_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.execve(argv[0], argv, env)
    except OSError as exc:
        os.write(2, f"zcron: cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
    os._exit(127)


def report_exits(answers: list[dict]) -> None:
    """Reap every child that has exited (one SIGCHLD may stand for many)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        answers.append({"pid": pid, "status": status})


def _send(sock: socket.socket, answers: list[dict]) -> bool:
    """A turn's answers in as few packets as fit the socket's buffer, each with the pidfds
    its answers name (an answer's "pidfd" becomes its index among the packet's fds); False
    when the worker is gone (nobody is left to tell). Our copies of the pidfds are closed."""
    ok = True
    start = 0
    while start < len(answers):
        packet, fds = [], []
        while start < len(answers) and len(packet) < ANSWERS_PER_PACKET:
            answer = answers[start]
            if "pidfd" in answer:
                if len(fds) == PIDFDS_PER_PACKET:
                    break
                fds.append(answer["pidfd"])
                answer = {**answer, "pidfd": len(fds) - 1}
            packet.append(answer)
            start += 1
        try:
            if ok:
                socket.send_fds(sock, [marshal.dumps(packet)], fds)
        except OSError:
            ok = False
        finally:
            for fd in fds:
                os.close(fd)
    return ok


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def main() -> None:
    """Serve the first socket passed (its fd in argv); fork a sibling for each further one,
    so that every spawner shares this light interpreter's pages."""
    fds = [int(fd) for fd in sys.argv[2:]]
    for n, fd in enumerate(fds[1:], 1):
        if os.fork() == 0:
            for other in (fds[0], *fds[n + 1 :]):  # fds[1:n] are closed already
                os.close(other)
            serve(socket.socket(fileno=fd))
            os._exit(0)
        os.close(fd)
    serve(socket.socket(fileno=fds[0]))


if __name__ == "__main__":
    main()
