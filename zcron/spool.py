"""A durable outbox of run records: kept on local disk until the sink acknowledges them."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import msgpack
import zmq

from zcron.net import receive

log = logging.getLogger(__name__)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
RESEND_AFTER_S = 2.0
# While the sink stays silent each record waits twice as long before its next resend, up
# to this: every send to an absent sink sits in the socket's queue, and resending the whole
# spool every 2 s would fill it (and flood the sink with duplicates when it is back).
MAX_RESEND_AFTER_S = 30.0


class Spool:
    """One file per unacknowledged record; written before it is sent, removed on ack.

    A record survives a worker restart and a sink outage; `due(now)` says what to (re)send.
    """

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pending: dict[str, dict] = {}
        self.sent_at: dict[str, float] = {}
        self.wait: dict[str, float] = {}  # run id -> how long after its last send to resend
        self._load()

    def _path(self, run_id: str) -> Path:
        return self.directory / f"{_SAFE.sub('_', run_id)}.rec"

    def _load(self) -> None:
        for path in sorted(self.directory.glob("*.rec")):
            try:
                rec = msgpack.unpackb(path.read_bytes(), raw=False)
                self.pending[rec["run_id"]] = rec
            except Exception as exc:  # a torn write from a crash: keep the file aside, say so
                log.error("spool %s unreadable (%s); moved to %s.bad", path, exc, path.name)
                path.rename(path.with_suffix(".bad"))
        if self.pending:
            log.info("spool %s: %d records to deliver", self.directory, len(self.pending))

    def add(self, rec: dict) -> None:
        """Persist a record (write then rename, so a crash never leaves half a file)."""
        path = self._path(rec["run_id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(rec, use_bin_type=True))
        os.replace(tmp, path)
        self.pending[rec["run_id"]] = rec

    def mark_sent(self, run_id: str, now: float) -> None:
        self.sent_at[run_id] = now

    def ack(self, run_ids: list[str]) -> None:
        """Forget acknowledged records; the sink answers, so resend the rest promptly again."""
        for run_id in run_ids:
            if self.pending.pop(run_id, None) is not None:
                self.sent_at.pop(run_id, None)
                self._path(run_id).unlink(missing_ok=True)
        self.wait.clear()

    def due(self, now: float, limit: int = 500) -> list[dict]:
        """Records never sent, or unacknowledged for longer than their wait (2 s, doubling)."""
        out = []
        for run_id, rec in self.pending.items():
            last = self.sent_at.get(run_id)
            wait = self.wait.get(run_id, RESEND_AFTER_S)
            if last is not None and now - last < wait:
                continue
            if last is not None:
                self.wait[run_id] = min(2 * wait, MAX_RESEND_AFTER_S)
            self.sent_at[run_id] = now
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    def take_acks(self, sink: zmq.Socket, reject: Callable[[str], None]) -> None:
        """Apply every `ack` waiting on the socket to the sink; anything else is rejected."""
        for _, msg in receive(sink, ("ack",), lambda why: reject(f"dropped from the sink: {why}")):
            self.ack(msg["run_ids"])

    def __len__(self) -> int:
        return len(self.pending)
