"""Requests from the `zcron` command line to a scheduler: run, push, status."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from zcron import protocol
from zcron.clock import Clock
from zcron.job import Job
from zcron.ledger import TickLedger
from zcron.plan import Plan


class ClientRequests:
    """One handler per operation in a table; each request is answered with a `reply`."""

    def __init__(
        self, scheduler_id: str, clock: Clock, plan: Plan, ledger: TickLedger,
        job_message: Callable[[Job, float, int], dict],
        fire_message: Callable[..., None],
        status: Callable[[], dict],
        send: Callable[[bytes, bytes], None],
    ) -> None:  # fmt: skip
        self.id, self.clock, self.plan, self.ledger = scheduler_id, clock, plan, ledger
        self.job_message, self.fire_message, self.send = job_message, fire_message, send
        self.handlers: dict[str, Callable[[dict], dict]] = {
            "run": self.run, "push": self.push, "status": lambda args: status(),
        }  # fmt: skip

    def on_request(self, identity: bytes, msg: dict) -> None:
        handler = self.handlers.get(msg["op"])
        try:
            if handler is None:
                raise ValueError(f"unknown request {msg['op']!r}")
            reply = {"ok": True, "error": None, "body": handler(msg["args"])}
        except (KeyError, TypeError, ValueError) as exc:
            reply = {"ok": False, "error": str(exc).strip("'\""), "body": None}
        self.send(identity, protocol.encode("reply", **reply))

    def run(self, args: dict) -> dict:
        name = args["job"]
        if name not in self.plan.jobs:
            raise KeyError(f"no job named {name!r} on scheduler {self.id}")
        tick = self.clock.now()
        self.fire_message(self.job_message(self.plan.jobs[name], tick, 1), tick, claim=False)
        return {"job": name, "tick": tick}

    def push(self, args: dict) -> dict:
        """An ad-hoc one-off command, now or at `at` (kept in local LMDB until it fires)."""
        command, at = args["command"], float(args["at"])
        if not command or not isinstance(command, list):
            raise ValueError("push: command must be a non-empty list of strings")
        if not all(isinstance(a, str) for a in command):
            raise ValueError("push: command must be a non-empty list of strings")
        run_id = uuid.uuid4().hex
        name = f"push:{run_id[:12]}"
        msg = {
            **job_message_defaults(self.id), "run_id": run_id, "job": name, "tick": at,
            "pool": str(args["pool"]), "command": command, "timeout": args.get("timeout"),
        }  # fmt: skip
        self.ledger.save_push(name, msg)
        self.plan.plan_push(name, msg)
        return {"job": name, "run_id": run_id, "tick": at}


def job_message_defaults(scheduler_id: str) -> dict:
    """The fields of a `job` message that a one-off does not set."""
    return {
        "run_id": uuid.uuid4().hex, "attempt": 1, "scheduler": scheduler_id, "shell": "/bin/sh",
        "user": None, "env": {}, "cwd": None, "timeout": None, "on_timeout": "kill",
        "dispatched": 0.0,
    }  # fmt: skip
