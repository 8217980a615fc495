"""Who may send what (spec §7, Roles): a key is trusted only for its role, and only as itself.

The sender of a message is the key name its connection authenticated with (ZAP User-Id,
see auth.py). Its role follows from the name: an id of `[cluster] schedulers` is that
scheduler, `sink` is the sink, `cli` and the names of `[clients]` are clients, and any
other trusted key is the worker whose id is the key's name (the Kubernetes Node
authorizer's rule: a credential acts only as itself). Without keys (`insecure = true`)
there is no sender and everything is allowed: anyone who reaches the ports may act.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from zcron.auth import CLI_KEY
from zcron.errors import ProtocolError

SCHEDULER, WORKER, SINK, CLIENT = "scheduler", "worker", "sink", "client"

# message type -> (the role that may send it, the field naming the sender's own id)
SENDERS: dict[str, tuple[str, str | None]] = {
    "ready": (WORKER, "worker"),
    "accepted": (WORKER, "worker"),
    "finished": (WORKER, None),  # bound to the worker by its routing id (slots.WorkerTable)
    "returned": (WORKER, None),  # the same: only the worker holding a run can return it
    "started": (WORKER, "worker"),
    "heartbeat": (SCHEDULER, "scheduler"),
    "claims": (SCHEDULER, "scheduler"),
    "outcomes": (SCHEDULER, "scheduler"),
    "jobset_request": (SCHEDULER, "scheduler"),
    "jobset": (SCHEDULER, "scheduler"),
    "pauses": (SCHEDULER, "scheduler"),
    "pauses_request": (SCHEDULER, "scheduler"),
    "jobs": (SCHEDULER, "scheduler"),
    "request": (CLIENT, None),
}


@dataclass(frozen=True)
class Sender:
    """The authenticated key behind a message; name None when keys are off (insecure)."""

    name: str | None
    role: str | None

    @property
    def authenticated(self) -> bool:
        return self.name is not None


ANYONE = Sender(None, None)


class Roles:
    """Key name -> role for one cluster, and the per-message check."""

    def __init__(self, schedulers: Mapping[str, str], clients: Mapping[str, tuple[str, ...]]):
        self.schedulers = set(schedulers)
        self.clients = dict(clients)

    def role_of(self, name: str) -> str | None:
        if not name:
            return None
        if name in self.schedulers:
            return SCHEDULER
        if name == SINK:
            return SINK
        if name == CLI_KEY or name in self.clients:
            return CLIENT
        return WORKER

    def sender(self, name: str | None) -> Sender:
        """The Sender for a key name from `Security.sender` (None: no keys)."""
        return ANYONE if name is None else Sender(name, self.role_of(name))

    def check(self, kind: str, msg: dict, sender: Sender) -> None:
        """Raise ProtocolError('unauthorized') unless `sender` may send this message."""
        if not sender.authenticated:
            return
        if kind == "result":
            return self.check_record(msg["record"], sender)
        if kind == "results":  # each record is checked alone, at the sink (check_record)
            self.reporter_field(sender)
            return None
        role, id_field = SENDERS.get(kind, (None, None))
        if role is None or sender.role != role:
            raise ProtocolError("unauthorized", f"{kind} from {sender.role or 'an unknown'} key "
                                f"{sender.name!r:.40}")  # fmt: skip
        if id_field is not None and msg[id_field] != sender.name:
            raise ProtocolError("impersonation", f"{kind} as {id_field} {msg[id_field]!r:.40} "
                                f"from key {sender.name!r:.40}")  # fmt: skip

    def check_record(self, rec: dict, sender: Sender) -> None:
        """A worker reports runs it ran; a scheduler reports runs it dispatched (missed, lost,
        skipped); nobody else writes records."""
        if not sender.authenticated:
            return
        field = self.reporter_field(sender)
        if rec[field] != sender.name:
            raise ProtocolError("impersonation", f"record with {field} {rec[field]!r:.40} "
                                f"from key {sender.name!r:.40}")  # fmt: skip

    def reporter_field(self, sender: Sender) -> str:
        """The record field that must name a sender allowed to write records."""
        field = {WORKER: "worker", SCHEDULER: "scheduler"}.get(sender.role or "")
        if field is None:
            raise ProtocolError(
                "unauthorized", f"result from {sender.role} key {sender.name!r:.40}"
            )
        return field

    def users_of(self, client: str | None) -> tuple[str, ...] | None:
        """The users a client key may run commands as (None: no keys, anyone as anyone)."""
        if client is None:
            return None
        return self.clients.get(client, ())
