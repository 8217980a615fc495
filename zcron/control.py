"""Requests from the `zcron` command line to a scheduler: run, push, cancel, pause, resume,
status.

Replies wait for the end of the loop turn (`commit`): the pushes read in that turn are
saved in one synced LMDB transaction first, so a client that pipelines its pushes pays
one fsync per turn, not per push, and an acknowledged push is on disk (spec §7).
Replies keep the order of their requests (a client may send many before reading).

Each request comes from a client key (zcron.roles); as whom it may run a command is what
`[clients]` gives that key (spec §7): a user it lists, by default the first, root only
where written. Without keys (insecure = true) anyone may run anything as anyone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from zcron import protocol
from zcron.clock import Clock
from zcron.errors import ProtocolError
from zcron.job import NAME_RE, Job
from zcron.ledger import LedgerFull, TickLedger
from zcron.log import iso_utc
from zcron.pauses import PausesFull, PauseSync
from zcron.plan import Plan
from zcron.roles import Roles, Sender

MAX_PUSHES = 100_000  # delayed pushes waiting at once: the ledger map must not fill up
MAX_PUSH_AHEAD_S = 366 * 86400.0
MAX_TIMEOUT_S = 366 * 86400.0
# Requests answered per commit at most (so pushes per transaction): past this a turn commits
# early, so one client's flood cannot hold its first replies for long; 500 take ~25 ms.
MAX_BATCH = 500


class ClientRequests:
    """One handler per operation in a table; each request is answered with a `reply`."""

    def __init__(
        self, scheduler_id: str, clock: Clock, plan: Plan, ledger: TickLedger,
        job_message: Callable[[Job, float, int], dict],
        fire_message: Callable[..., None],
        status: Callable[[], dict],
        send: Callable[[bytes, bytes], None],
        roles: Roles,
        sender: Callable[[], Sender],
        cancel_run: Callable[[str, Callable[[str | None, str], object]], dict | None],
        pauses: PauseSync | None = None,
    ) -> None:  # fmt: skip
        self.id, self.clock, self.plan, self.ledger = scheduler_id, clock, plan, ledger
        self.job_message, self.fire_message, self.send = job_message, fire_message, send
        self.roles, self.sender = roles, sender  # sender(): the key behind this request
        self.cancel_run, self.pauses = cancel_run, pauses
        self.unsaved: dict[str, dict] = {}  # pushes checked this turn, not yet in LMDB
        # replies of this turn in request order: (identity, reply, name of its push or None)
        self.unsent: list[tuple[bytes, dict, str | None]] = []
        self.pushing: str | None = None  # the push being handled (its reply waits on it)
        self.handlers: dict[str, Callable[[dict], dict]] = {
            "run": self.run, "push": self.push, "status": lambda args: status(),
            "cancel": self.cancel, "pause": lambda args: self.set_paused(args, True),
            "resume": lambda args: self.set_paused(args, False),
        }  # fmt: skip

    def on_request(self, identity: bytes, msg: dict) -> None:
        """Handle one request; its reply goes out at `commit`, after the turn's pushes."""
        handler = self.handlers.get(msg["op"])
        self.pushing = None
        try:
            if handler is None:
                raise ValueError(f"unknown request {msg['op']!r}")
            reply = {"ok": True, "error": None, "body": handler(msg["args"])}
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            reply = {"ok": False, "error": str(exc).strip("'\""), "body": None}
        self.unsent.append((identity, reply, self.pushing))
        if len(self.unsent) >= MAX_BATCH:  # pushes among them, or not: the turn is long
            self.commit()

    def commit(self) -> None:
        """Save the turn's pushes in one transaction, then plan them and send every reply
        in order. When the ledger cannot take them, each of those pushes is refused."""
        refused = None
        if self.unsaved:
            try:
                self.ledger.save_pushes(self.unsaved)
            except LedgerFull as exc:
                refused = f"push: {exc}"
            else:
                for name, msg in self.unsaved.items():
                    self.plan.plan_push(name, msg)
            self.unsaved = {}
        unsent, self.unsent = self.unsent, []
        for identity, reply, pushed in unsent:
            if refused is not None and pushed is not None:
                reply = {"ok": False, "error": refused, "body": None}
            self.send(identity, protocol.encode("reply", **reply))

    def run(self, args: dict) -> dict:
        name = args["job"]
        if name not in self.plan.jobs:
            raise KeyError(f"no job named {name!r} on scheduler {self.id}")
        job = self.plan.jobs[name]
        msg = self.job_message(job, self.clock.now(), 1)
        msg["user"] = self.client_user(job.user, f"run {name}")
        self.fire_message(msg, msg["tick"], claim=False)
        return {"job": name, "tick": msg["tick"], "run_id": msg["run_id"]}

    def client_user(self, wanted: str | None, what: str) -> str | None:
        """As whom the requesting client may run `what`: a user its key lists in [clients],
        by default the first. Without keys: as asked (None = the worker's own user)."""
        name = self.sender().name
        allowed = self.roles.users_of(name)
        if allowed is None:
            return wanted
        if not allowed:
            raise ValueError(f"client key {name!r} may not run commands: "
                             "[clients] names no users for it")  # fmt: skip
        user = wanted or allowed[0]
        if user not in allowed:
            raise ValueError(f"client key {name!r} may not {what} as {user!r} "
                             f"(allowed: {', '.join(allowed)})")  # fmt: skip
        return user

    def push(self, args: dict) -> dict:
        """An ad-hoc one-off command, now or at `at` (kept in local LMDB until it fires).
        Every argument is bounded before anything is stored (spec §7)."""
        command, at, pool = args["command"], args["at"], args["pool"]
        if not isinstance(command, list) or not command or not protocol.strings(command):
            raise ValueError("push: command must be a non-empty list of strings")
        now = self.clock.now()
        if not protocol.is_number(at) or not now - 86400 <= at <= now + MAX_PUSH_AHEAD_S:
            raise ValueError("push: at must be a time within a year from now")
        timeout = args.get("timeout")
        if timeout is not None and (
            not protocol.is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S
        ):
            raise ValueError("push: timeout must be a duration above 0 and within a year")
        if not isinstance(pool, str) or not pool:
            raise ValueError("push: pool must be a pool name")
        if len(self.plan.pushed) + len(self.unsaved) >= MAX_PUSHES:
            raise ValueError(f"push: {MAX_PUSHES} delayed pushes are waiting already")
        run_id = uuid.uuid4().hex
        name = f"push:{run_id[:12]}"
        msg = {
            **job_message_defaults(self.id), "run_id": run_id, "job": name, "tick": float(at),
            "pool": pool, "command": command, "timeout": timeout,
            "user": self.client_user(args.get("user"), "push"),
        }  # fmt: skip
        protocol.validate("job", msg)  # what the worker will check, before it is saved
        self.unsaved[name] = msg  # saved, planned and answered at commit()
        self.pushing = name
        return {"job": name, "run_id": run_id, "tick": msg["tick"], "user": msg["user"]}

    def cancel(self, args: dict) -> dict:
        """`zcron cancel RUN_ID`: a delayed push that has not started is dropped (recorded
        `skipped`); a running or parked run is killed by its worker (recorded `killed`).
        The client must be allowed to run as the run's user (spec §7)."""
        run_id = args["run_id"]
        if not isinstance(run_id, str) or not 0 < len(run_id) <= protocol.MAX_NAME:
            raise ValueError("cancel: a run id, as `zcron runs` shows it")
        found = self.cancel_run(run_id, self.may_cancel)
        if found is None:
            raise KeyError(f"no run {run_id} is running, parked or waiting on scheduler {self.id}")
        return found

    def may_cancel(self, user: str | None, run_id: str) -> None:
        """A run of a user the client may run as (a user-less one: any client with users)."""
        if not self.may_act_for(user):
            raise ValueError(f"client key {self.sender().name!r} may not cancel run {run_id} "
                             f"of user {user or 'the worker'}")  # fmt: skip

    def may_act_for(self, user: str | None) -> bool:
        """Whether the client may stop what runs as `user`: a user its key may run as
        (None, the worker's own user: any client with users; without keys: anyone)."""
        allowed = self.roles.users_of(self.sender().name)
        return allowed is None or (user is None and bool(allowed)) or user in allowed

    def set_paused(self, args: dict, paused: bool) -> dict:
        """`zcron pause JOB` / `zcron resume JOB`, for every scheduler (pauses.py). The client
        must be allowed to run as the job's user, as for cancel (docs/security.md)."""
        name, verb = args["job"], "pause" if paused else "resume"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"{verb}: a job name, as `zcron check` lists it")
        job = self.plan.jobs.get(name)
        if job is None or self.pauses is None:
            raise KeyError(f"no job named {name!r} on scheduler {self.id}")
        if not self.may_act_for(job.user):
            raise ValueError(f"client key {self.sender().name!r} may not {verb} {name} "
                             f"(it runs as {job.user or 'the worker'})")  # fmt: skip
        by = self.sender().name or "a client without keys"
        try:
            entry = self.pauses.apply(name, paused, by)
        except (PausesFull, LedgerFull) as exc:
            raise ValueError(f"{verb} {name}: {exc}") from None
        return {"job": name, "paused": entry.paused, "since": entry.stamp, "by": entry.by,
                "at": iso_utc(entry.stamp)}  # fmt: skip


def job_message_defaults(scheduler_id: str) -> dict:
    """The fields of a `job` message that a one-off does not set."""
    return {
        "run_id": uuid.uuid4().hex, "attempt": 1, "scheduler": scheduler_id, "shell": "/bin/sh",
        "user": None, "env": {}, "cwd": None, "timeout": None, "on_timeout": "kill",
        "dispatched": 0.0,
    }  # fmt: skip
