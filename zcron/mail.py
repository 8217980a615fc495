"""Cron's MAILTO on the worker: a run that printed anything is mailed with `sendmail -t`.

As cronie's do_command.c: when a run wrote to stdout or stderr and its job has `mailto`
(`MAILTO=` in cron.d), the worker pipes a mail to `sendmail -t -i` (found on the worker's
PATH, then in /usr/sbin and /usr/lib) with From, To, Subject, Auto-Submitted and the
`X-Cron-Env` lines of the run's cron environment. Unlike cron, the body is what the
worker keeps of the output: the last 4 KiB of stdout, then of stderr.

sendmail runs as the worker's own user, started and reaped by the worker's spawner like a
run (never in the worker's loop), and is killed past SENDMAIL_TIMEOUT_S. Every header is
built here from checked values, with control characters removed: nothing a job prints or
sets in its environment can add a header or a recipient.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import signal
import socket
from collections.abc import Callable, Iterable
from email.header import Header
from email.utils import formatdate

from zcron.daemon import Rejects
from zcron.job import mail_addresses
from zcron.process import Refused, job_environment, resolve_user
from zcron.spawner import Spawner, SpawnerBusy

log = logging.getLogger(__name__)
SENDMAIL_DIRS = ("/usr/sbin", "/usr/lib")
# For tests: the directories searched after $PATH, colon-separated, instead of SENDMAIL_DIRS.
SENDMAIL_DIRS_ENV = "ZCRON_SENDMAIL_DIRS"
SENDMAIL_ARGS = ("-t", "-i")  # recipients from the headers; a lone "." does not end the mail
SENDMAIL_TIMEOUT_S = 30.0
MAX_MAILS = 64  # sendmail processes at once; more mails are counted as failures, not queued
MAX_MAIL_BYTES = 60_000  # written whole into a fresh pipe (64 KiB): the write never blocks
CRON_ENV = ("SHELL", "HOME", "PATH", "LOGNAME", "USER")  # as cron sets them for a job
SENDMAIL_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG")  # the worker's, for the MTA
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def find_sendmail(path: str, fallback: Iterable[str]) -> str | None:
    """The first executable `sendmail` on `path`, then in the `fallback` directories."""
    for directory in [*path.split(":"), *fallback]:
        candidate = os.path.join(directory or ".", "sendmail")
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def sendmail_dirs(environ: dict[str, str] | os._Environ) -> tuple[str, ...]:
    override = environ.get(SENDMAIL_DIRS_ENV)
    return SENDMAIL_DIRS if override is None else tuple(d for d in override.split(":") if d)


def header(value: str, limit: int = 400) -> str:
    """One header value: control characters (CR, LF) become spaces, cut to `limit`, and
    non-ASCII text as an RFC 2047 encoded word."""
    value = _CONTROL.sub(" ", value)[:limit]
    return value if value.isascii() else Header(value, "utf-8").encode()


def should_mail(msg: dict, rec: dict) -> bool:
    """Cron's rule: the job has an address and the run printed something (a run that
    never started printed nothing: its reason is zcron's, in the record)."""
    output = rec["stdout_tail"] or rec["stderr_tail"]
    return bool(mail_addresses(msg.get("mailto", ""))) and bool(output) and bool(rec["started"])


def compose(msg: dict, rec: dict, env: dict[str, str], host: str, sender: str) -> bytes:
    """The mail for one run, headers then a blank line then its output (bytes, bounded)."""
    short_host = host.split(".")[0]
    command = msg["command"] if isinstance(msg["command"], str) else " ".join(msg["command"])
    lines = [
        f"From: {header(sender, 100)} (zcron on {header(short_host, 100)})",
        f"To: {mail_addresses(msg['mailto'])}",
        f"Subject: zcron <{header(env.get('USER', '?'), 64)}@{header(short_host, 100)}> "
        f"{msg['job']}: {rec['status']}: {header(command, 200)}",
        f"Date: {formatdate(localtime=True)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "Auto-Submitted: auto-generated",
        "Precedence: bulk",
        f"X-Zcron-Job: {msg['job']}",
        f"X-Zcron-Run-Id: {header(msg['run_id'], 100)}",
        f"X-Zcron-Status: {rec['status']}",
    ]
    names = [*CRON_ENV, *sorted(n for n in env if n.startswith("ZCRON_"))]
    lines += [f"X-Cron-Env: <{name}={header(env[name])}>" for name in names if name in env]
    out, err = rec["stdout_tail"], rec["stderr_tail"]
    body = out + ("\n" if out and err and not out.endswith("\n") else "") + err
    data = ("\n".join(lines) + "\n\n" + body).encode("utf-8", errors="replace")
    return data[:MAX_MAIL_BYTES]


class Mailer:
    """The worker's mails in flight: sendmail started through a spawner, reaped from its
    answers, killed past the timeout; each mail not delivered to sendmail is counted."""

    def __init__(self, worker_id: str, monotonic: Callable[[], float]) -> None:
        self.worker_id, self.monotonic = worker_id, monotonic
        self.requests: dict[int, str] = {}  # spawn request -> its run's job
        self.running: dict[int, float] = {}  # sendmail pid -> monotonic deadline
        self.failures = 0
        self.rejects = Rejects(monotonic)
        self.host = socket.gethostname()
        self.sender = pwd.getpwuid(os.getuid()).pw_name
        self.environ = {k: v for k, v in os.environ.items() if k in SENDMAIL_ENV}

    def fail(self, why: str) -> None:
        self.failures += 1
        self.rejects(f"mail not sent: {why}", "mail")

    def send(self, msg: dict, rec: dict, spawners: Iterable[Spawner]) -> None:
        """Mail the run's output if cron would; never waits on sendmail."""
        if not should_mail(msg, rec):
            return
        sendmail = find_sendmail(os.environ.get("PATH", ""), sendmail_dirs(os.environ))
        if sendmail is None:
            dirs = ", ".join(sendmail_dirs(os.environ))
            return self.fail(f"no sendmail on the worker's PATH nor in {dirs}")
        if len(self.running) + len(self.requests) >= MAX_MAILS:
            return self.fail(f"{MAX_MAILS} mails are being sent already")
        data = compose(msg, rec, self.run_env(msg), self.host, self.sender)
        request = self.spawn([sendmail, *SENDMAIL_ARGS], data, spawners)
        if request is None:
            return self.fail("every spawner is busy")
        self.requests[request] = msg["job"]

    def run_env(self, msg: dict) -> dict[str, str]:
        try:
            return job_environment(msg, resolve_user(msg["user"]), self.worker_id)
        except Refused:  # the account went away since the run started
            return {}

    def spawn(self, argv: list[str], data: bytes, spawners: Iterable[Spawner]) -> int | None:
        """Start sendmail with the mail waiting in its stdin; the spawn request's id."""
        stdin_r, stdin_w = os.pipe()
        try:
            os.write(stdin_w, data)  # < a pipe's capacity: all of it, at once
        finally:
            os.close(stdin_w)
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for spawner in spawners:
                try:
                    return spawner.spawn(argv, self.environ, [stdin_r, devnull, devnull], None)
                except SpawnerBusy:
                    continue
            return None
        finally:
            os.close(stdin_r)
            os.close(devnull)

    def take(self, answer: dict) -> bool:
        """Handle a spawner's answer if it is about a mail (else False: a run's)."""
        request, pid = answer.get("id"), answer.get("pid")
        if request is not None and request in self.requests:
            job = self.requests.pop(request)
            if pid is None:
                self.fail(f"mail of {job}: {answer.get('error', 'sendmail did not start')}")
            else:
                self.running[pid] = self.monotonic() + SENDMAIL_TIMEOUT_S
            return True
        if request is None and pid in self.running and "status" in answer:
            del self.running[pid]
            code = os.waitstatus_to_exitcode(answer["status"])
            if code != 0:
                self.fail(f"sendmail exited with {code}" if code > 0 else f"sendmail killed "
                          f"by signal {-code}")  # fmt: skip
            return True
        return False

    def expire(self, now_mono: float) -> None:
        """Kill sendmail past its timeout (its own session: spawner.py); reaped as usual."""
        for pid, deadline in list(self.running.items()):
            if deadline <= now_mono:
                self.running[pid] = float("inf")  # killed once; the reap counts the failure
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def next_deadline(self) -> float | None:
        return min(self.running.values(), default=None)
