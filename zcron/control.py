"""Requests from the `zcron` command line to a scheduler: run, push, status."""

from __future__ import annotations

import heapq
import math
import time
import uuid
from typing import TYPE_CHECKING

from zcron import protocol
from zcron.errors import ProtocolError
from zcron.takeover import LEAD_S

if TYPE_CHECKING:
    from zcron.scheduler import Scheduler

REQUESTS = ("run", "push", "status")
MAX_PUSHES = 100_000  # delayed pushes waiting at once: the ledger map must not fill up
MAX_PUSH_AHEAD_S = 366 * 86400.0
MAX_TIMEOUT_S = 366 * 86400.0


class ClientRequests:
    """A mixin of Scheduler: one `request_<op>` per operation, answered with a `reply`."""

    def on_request(self: Scheduler, identity: bytes, msg: dict) -> None:
        handler = getattr(self, f"request_{msg['op']}", None) if msg["op"] in REQUESTS else None
        try:
            if handler is None:
                raise ValueError(f"unknown request {msg['op']!r}")
            reply = {"ok": True, "error": None, "body": handler(msg["args"])}
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            reply = {"ok": False, "error": str(exc).strip("'\""), "body": None}
        self.router.send_multipart([identity, protocol.encode("reply", **reply)])

    def request_run(self: Scheduler, args: dict) -> dict:
        name = args["job"]
        if name not in self.jobs:
            raise KeyError(f"no job named {name!r} on scheduler {self.id}")
        job = self.jobs[name]
        msg = self.job_message(job, time.time(), 1)
        msg["user"] = self.client_user(job.user, f"run {name}")
        self.fire_message(msg, msg["tick"], claim=False)
        return {"job": name, "tick": msg["tick"], "run_id": msg["run_id"]}

    def client_user(self: Scheduler, wanted: str | None, what: str) -> str | None:
        """As whom the requesting client may run `what` (spec §7): a user its key lists in
        [clients], by default the first; root only when listed. Without keys: as asked
        (None = the worker's own user)."""
        allowed = self.roles.users_of(self.sender.name)
        if allowed is None:
            return wanted
        if not allowed:
            raise ValueError(f"client key {self.sender.name!r} may not run commands: "
                             "[clients] names no users for it")  # fmt: skip
        user = wanted or allowed[0]
        if user not in allowed:
            raise ValueError(f"client key {self.sender.name!r} may not {what} as {user!r} "
                             f"(allowed: {', '.join(allowed)})")  # fmt: skip
        return user

    def request_push(self: Scheduler, args: dict) -> dict:
        """An ad-hoc one-off command, now or at `at` (kept in local LMDB until it fires).
        Every argument is bounded before anything is stored (spec §7)."""
        command, at, pool = args["command"], args["at"], args["pool"]
        if not isinstance(command, list) or not command or not _strings(command):
            raise ValueError("push: command must be a non-empty list of strings")
        now = time.time()
        if not _number(at) or not now - 86400 <= at <= now + MAX_PUSH_AHEAD_S:
            raise ValueError("push: at must be a time within a year from now")
        timeout = args.get("timeout")
        if timeout is not None and (not _number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S):
            raise ValueError("push: timeout must be a duration above 0 and within a year")
        if not isinstance(pool, str) or not pool:
            raise ValueError("push: pool must be a pool name")
        if len(self.pushed) >= MAX_PUSHES:
            raise ValueError(f"push: {MAX_PUSHES} delayed pushes are waiting already")
        run_id = uuid.uuid4().hex
        name = f"push:{run_id[:12]}"
        msg = {
            **self.job_message_defaults(), "run_id": run_id, "job": name, "tick": float(at),
            "pool": pool, "command": command, "timeout": timeout,
            "user": self.client_user(args.get("user"), "push"),
        }  # fmt: skip
        protocol.validate("job", msg)  # what the worker will check, before it is saved
        self.ledger.save_push(name, msg)
        self.plan_push(name, msg)
        return {"job": name, "run_id": run_id, "tick": msg["tick"], "user": msg["user"]}

    def plan_push(self: Scheduler, name: str, msg: dict) -> None:
        self.pushed[name] = msg
        heapq.heappush(self.due, (msg["tick"] - LEAD_S, msg["tick"], 0, name))

    def request_status(self: Scheduler, args: dict) -> dict:
        now_mono = time.monotonic()
        eligible = self.members.eligible_at(time.time(), now_mono)
        owned = sum(
            1 for job in self.jobs.values() if self.owner(job, time.time(), now_mono) == self.id
        )
        return {
            "scheduler": self.id, "jobs": len(self.jobs), "owned": owned,
            "digest": self.members.my_digest, "since": self.members.since,
            "eligible": self.members.self_eligible, "reason": self.members.self_reason,
            "peers": {p.id: {"state": "live" if self.members.is_live(p, now_mono) else "dead",
                             "eligible": p.id in eligible, "digest": p.digest,
                             "clock_offset": p.clock_offset, "reason": p.reason}
                      for p in self.members.peers.values()},
            "pools": self.pool_view(),
            "workers": [{"id": w.id, "pools": w.pools, "slots": w.slots,
                         "free": max(0, w.credit), "running": len(w.running)}
                        for w in self.workers.workers.values()],
            "waiting": {pool: len(q) for pool, q in self.waiting.items()},
            "counters": dict(self.counters),
            "errors": [str(e) for e in self.errors],
        }  # fmt: skip

    def pool_view(self: Scheduler) -> dict[str, dict[str, int]]:
        """Slots per pool, including pools our jobs name that no live worker serves."""
        pools = self.workers.pools()
        for job in self.jobs.values():
            pools.setdefault(job.pool, {"workers": 0, "slots": 0, "free": 0})
        return pools


def _strings(values: list) -> bool:
    return all(isinstance(v, str) for v in values)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
