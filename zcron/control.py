"""Requests from the `zcron` command line to a scheduler: run, push, status."""

from __future__ import annotations

import heapq
import uuid
from typing import TYPE_CHECKING

from zcron import protocol
from zcron.takeover import LEAD_S

if TYPE_CHECKING:
    from zcron.scheduler import Scheduler

REQUESTS = ("run", "push", "status")


class ClientRequests:
    """A mixin of Scheduler: one `request_<op>` per operation, answered with a `reply`."""

    def on_request(self: Scheduler, identity: bytes, msg: dict) -> None:
        handler = getattr(self, f"request_{msg['op']}", None) if msg["op"] in REQUESTS else None
        try:
            if handler is None:
                raise ValueError(f"unknown request {msg['op']!r}")
            reply = {"ok": True, "error": None, "body": handler(msg["args"])}
        except (KeyError, TypeError, ValueError) as exc:
            reply = {"ok": False, "error": str(exc).strip("'\""), "body": None}
        self.router.send_multipart([identity, protocol.encode("reply", **reply)])

    def request_run(self: Scheduler, args: dict) -> dict:
        name = args["job"]
        if name not in self.jobs:
            raise KeyError(f"no job named {name!r} on scheduler {self.id}")
        tick = self.clock.now()
        self.fire_message(self.job_message(self.jobs[name], tick, 1), tick, claim=False)
        return {"job": name, "tick": tick}

    def request_push(self: Scheduler, args: dict) -> dict:
        """An ad-hoc one-off command, now or at `at` (kept in local LMDB until it fires)."""
        command, at = args["command"], float(args["at"])
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise ValueError("push: command must be a non-empty list of strings")
        if not command:
            raise ValueError("push: command must be a non-empty list of strings")
        run_id = uuid.uuid4().hex
        name = f"push:{run_id[:12]}"
        msg = {
            **self.job_message_defaults(), "run_id": run_id, "job": name, "tick": at,
            "pool": str(args["pool"]), "command": command, "timeout": args.get("timeout"),
        }  # fmt: skip
        self.ledger.save_push(name, msg)
        self.plan_push(name, msg)
        return {"job": name, "run_id": run_id, "tick": at}

    def plan_push(self: Scheduler, name: str, msg: dict) -> None:
        self.pushed[name] = msg
        heapq.heappush(self.due, (msg["tick"] - LEAD_S, msg["tick"], 0, name))

    def request_status(self: Scheduler, args: dict) -> dict:
        now, now_mono = self.clock.now(), self.clock.monotonic()
        eligible = self.members.eligible_at(now, now_mono)
        owned = sum(1 for job in self.jobs.values() if self.owner(job, now, now_mono) == self.id)
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
