"""One run of one job: its own session, user, environment, output tails, and kill of its group.

A run is *armed* before its tick: the process is spawned parked on a read of its stdin (a
pipe), and *released* at the tick by one write. Spawning (fork, exec, the shell's start-up,
~1-6 ms of CPU) then happens ahead of time, so N jobs due at one instant start together
instead of one spawn after another. For sh-family shells the job's own shell is parked and
`eval`s the command; other shells and exec'd lists are parked behind /bin/sh and exec'd.
The process itself is started, and reaped, by the worker's spawner (zcron/spawner.py).
"""

from __future__ import annotations

import os
import pwd
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

from zcron.protocol import run_record
from zcron.spawner import Spawner, SpawnerBusy

SH_FAMILY = {"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"}
# $1 = the address-space limit in KiB (0: none), $2 = working directory, $3 = the command
# (shell form) or the argv (exec form). `ulimit -v` is RLIMIT_AS, set in the job's own
# process just before it runs: posix_spawn cannot set limits, and a preexec_fn is not
# fork-safe in a process with ZeroMQ's threads.
_PARK = 'read -r _ || exit 125; exec </dev/null; cd -- "$2" || exit 126; '
_LIMIT = '[ "$1" = 0 ] || ulimit -v "$1" || exit 126; '
PARKED_SHELL = _PARK + _LIMIT + 'eval "shift 3; $3"'
PARKED_EXEC = _PARK + _LIMIT + 'shift 2; exec "$@"'
TAIL_BYTES = 4096
DRAIN_READS = 64  # at most 4 MiB read from a pipe after its run's process ended
KILL_GRACE_S = 5.0
# A cron-like base environment; the job's own env and the ZCRON_* variables go on top.
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Refused(Exception):
    """The job cannot be started here (unknown user, missing cwd, command not found)."""


class Tail:
    """The last `limit` bytes written to a stream; memory stays bounded whatever the job prints."""

    def __init__(self, limit: int = TAIL_BYTES):
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) > 2 * self.limit:
            del self.buffer[: len(self.buffer) - self.limit]

    def text(self) -> str:
        return bytes(self.buffer[-self.limit :]).decode("utf-8", errors="replace")


def resolve_user(wanted: str | None) -> pwd.struct_passwd:
    """The account a job runs as (spec §7): anyone when we are root, else only ourselves.

    Answers are kept ACCOUNT_TTL_S: each lookup reads /etc/passwd (NSS), once per job."""
    key, now_mono = (os.getuid(), wanted), time.monotonic()
    known = _accounts.get(key)
    if known is not None and now_mono < known[0]:
        return known[1]
    account = _lookup_user(wanted)
    _accounts[key] = (now_mono + ACCOUNT_TTL_S, account)
    return account


ACCOUNT_TTL_S = 10.0
_accounts: dict[tuple[int, str | None], tuple[float, pwd.struct_passwd]] = {}


def _lookup_user(wanted: str | None) -> pwd.struct_passwd:
    me = pwd.getpwuid(os.getuid())
    if wanted is None or wanted == me.pw_name:
        return me
    if os.getuid() != 0:
        raise Refused(f"worker runs as {me.pw_name!r} and cannot run jobs as user {wanted!r}")
    try:
        return pwd.getpwnam(wanted)
    except KeyError:
        raise Refused(f"unknown user {wanted!r}") from None


def job_environment(msg: dict, account: pwd.struct_passwd, worker_id: str) -> dict[str, str]:
    """The job's environment: cron's minimal base, the job's env, then the ZCRON_* variables."""
    env = {
        "HOME": account.pw_dir,
        "LOGNAME": account.pw_name,
        "USER": account.pw_name,
        "SHELL": msg["shell"],
        "PATH": BASE_PATH,
    }
    env.update(msg["env"])
    env.update(
        ZCRON_JOB=msg["job"],
        ZCRON_TICK=f"{msg['tick']:.6f}",
        ZCRON_RUN_ID=msg["run_id"],
        ZCRON_ATTEMPT=str(msg["attempt"]),
        ZCRON_SCHEDULER=msg["scheduler"],
        ZCRON_WORKER=worker_id,
    )
    return env


def parked_argv(msg: dict, cwd: str) -> list[str]:
    """The argv of a parked process that runs the job's command once released."""
    command, shell = msg["command"], msg["shell"]
    limit_kib = str(-(-(msg.get("memory_max") or 0) // 1024))
    if isinstance(command, str) and os.path.basename(shell) in SH_FAMILY:
        return [shell, "-c", PARKED_SHELL, shell, limit_kib, cwd, command]
    argv = [shell, "-c", command] if isinstance(command, str) else list(command)
    return ["/bin/sh", "-c", PARKED_EXEC, "zcron", limit_kib, cwd, *argv]


def _working_dir(msg: dict, account: pwd.struct_passwd) -> str:
    """The job's cwd, else its user's home as cron does (else /)."""
    if msg["cwd"]:
        return msg["cwd"]
    return account.pw_dir if os.path.isdir(account.pw_dir) else "/"


def spawn_request(msg: dict, worker_id: str) -> tuple[list[str], dict[str, str], tuple | None]:
    """The parked process's argv, environment and user switch ([uid, gid, groups] or None
    for our own user); raise Refused when the job cannot be started here."""
    account = resolve_user(msg["user"])
    cwd = _working_dir(msg, account)
    if os.getuid() != 0 and not os.path.isdir(cwd):
        raise Refused(f"working directory {cwd!r} does not exist")
    user = None
    if account.pw_uid != os.getuid():
        groups = os.getgrouplist(account.pw_name, account.pw_gid)
        user = (account.pw_uid, account.pw_gid, groups)
    return parked_argv(msg, cwd), job_environment(msg, account, worker_id), user


@dataclass
class Run:
    """One attempt: armed (parked) until released at its tick, then running until reaped."""

    msg: dict
    worker_id: str
    request: int  # the spawn request's id, until the spawner answers with the pid
    go: int | None  # write end of the parked process's stdin; None once released
    streams: dict[int, Tail]  # output pipe fd -> its tail
    tails: tuple[Tail, Tail]  # stdout, stderr
    pid: int | None = None  # None until the spawner has started the process
    pidfd: int | None = None  # readable once the process has exited (polled until then)
    exited_at: float | None = None  # when its pidfd said so (the record's `finished`)
    pending_signal: int | None = None  # sent once the pid is known
    started: float | None = None
    returncode: int | None = None
    deadline: float | None = None  # monotonic time of the timeout
    kill_at: float | None = None  # monotonic time to SIGKILL the group after SIGTERM
    timed_out: bool = False
    killed_by_us: bool = False
    cancelled: str | None = None  # why the scheduler had the run killed (overlap = replace)
    fenced: str | None = None  # why a parked run was not released after the worker stalled
    state: str = "armed"  # armed → released → exited → reported (see zcron/runs.py)

    @property
    def run_id(self) -> str:
        return self.msg["run_id"]

    def release(self, now: float, now_mono: float) -> None:
        """Let the parked process run the command: the run starts now."""
        if self.go is None:
            return
        try:
            os.write(self.go, b"\n")
        except BrokenPipeError:
            pass  # it died while parked; the reap reports how
        os.close(self.go)
        self.go = None
        self.started = now
        if self.msg["timeout"]:
            self.deadline = now_mono + self.msg["timeout"]

    def pipes(self) -> list[int]:
        """Output pipes still open."""
        return list(self.streams)

    def read_pipe(self, fd: int) -> bool:
        """Move what is readable from one output pipe into its tail; False at its end."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True  # a spurious wake-up
        if chunk:
            self.streams[fd].feed(chunk)
        return bool(chunk)

    def drain_pipe(self, fd: int) -> None:
        """Read what is buffered, within reason: a background child may hold the pipe open
        and keep writing after the run's process ended."""
        for _ in range(DRAIN_READS):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.streams[fd].feed(chunk)

    def close_pipe(self, fd: int) -> None:
        """Stop reading a pipe (its poller must have forgotten it first: epoll keys on fds)."""
        del self.streams[fd]
        os.close(fd)

    def spawned(self, pid: int, at: float) -> None:
        """The spawner started the process at `at`: a run released before that started
        then; a signal asked for meanwhile is sent now."""
        self.pid = pid
        if self.started is not None and at > self.started:
            self.started = at
        if self.pending_signal is not None:
            self.signal_group(self.pending_signal)

    def signal_group(self, signum: int) -> None:
        if self.pid is None:
            self.pending_signal = signum  # the strongest asked for (KILL after TERM)
            return
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def begin_kill(self, now_mono: float, grace: float = KILL_GRACE_S) -> None:
        """SIGTERM the whole group now and SIGKILL it after the grace."""
        self.killed_by_us = True
        self.signal_group(signal.SIGTERM)
        self.kill_at = now_mono + grace

    def exited(self, wait_status: int) -> None:
        """The spawner reaped the process with this wait status."""
        self.returncode = os.waitstatus_to_exitcode(wait_status)

    def finish(self, now: float) -> dict:
        """Drain the pipes, release fds and kill stragglers in a killed group; the record."""
        for fd in self.pipes():
            self.drain_pipe(fd)
            self.close_pipe(fd)
        if self.killed_by_us:
            self.signal_group(signal.SIGKILL)  # children that trapped TERM leave nothing behind
        if self.go is not None:
            os.close(self.go)
            self.go = None
        return self.record(now)

    def record(self, now: float) -> dict:
        code = self.returncode if self.returncode is not None else -signal.SIGKILL
        exit_code, signum = (code, None) if code >= 0 else (None, -code)
        out, err = self.tails
        if self.cancelled:  # the job may have printed on its way out: the reason comes last
            err.feed(f"\nzcron: cancelled: {self.cancelled}\n".encode())
        if self.fenced:
            err.feed(f"zcron: {self.fenced}\n".encode())
        return run_record(
            self.msg,
            self.worker_id,
            status=self.status(exit_code, signum),
            started=self.started,
            # the exit as its pidfd told it, not the later news of its status
            finished=max(self.exited_at or now, self.started or 0.0),
            exit_code=exit_code,
            signal=signum,
            stdout_tail=out.text(),
            stderr_tail=err.text(),
        )

    def status(self, exit_code: int | None, signum: int | None) -> str:
        """killed (cancelled, or by a signal), timeout (also on_timeout = alert), ok, failed."""
        if self.fenced and self.started is None:
            return "refused"  # never released: the command never started
        if self.cancelled:
            return "killed"
        if self.timed_out:
            return "timeout"
        if signum is not None or self.started is None:
            return "killed"
        return "ok" if exit_code == 0 else "failed"


def arm_run(msg: dict, worker_id: str, spawners: Iterable[Spawner]) -> Run | None:
    """Have the attempt spawned by the first of `spawners` with room, parked until `release`;
    None when none has room now. Raise Refused when it cannot be started here (a spawner
    may still refuse it later: see the worker)."""
    argv, env, user = spawn_request(msg, worker_id)
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    request = None
    try:
        for spawner in spawners:
            try:
                request = spawner.spawn(argv, env, [go_r, out_w, err_w], user,
                                        run_record(msg, worker_id, status="lost"),
                                        pidfd=True)  # fmt: skip
                break
            except SpawnerBusy:
                continue
    finally:  # the child's ends go with the request; ours too when there was none
        for fd in (go_r, out_w, err_w):
            os.close(fd)
        if request is None:
            for fd in (go_w, out_r, err_r):
                os.close(fd)
    if request is None:
        return None
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
    out, err = Tail(), Tail()
    return Run(msg, worker_id, request, go_w, {out_r: out, err_r: err}, (out, err))
