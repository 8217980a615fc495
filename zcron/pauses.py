"""`zcron pause` / `zcron resume`: which jobs are paused, agreed by every scheduler.

A last-writer-wins map job -> (paused, stamp, by), kept in each scheduler's ledger LMDB so
it survives restarts. The scheduler a client asks applies the change and sends it to its
peers at once (`pauses`); a peer that missed it (down, or cut off) notices on the next
heartbeat, whose `pauses` digest then differs from its own, asks for the whole map
(`pauses_request`) and merges it. Merging keeps the newer entry of each job (ties broken by
the rest of the entry), so the maps converge whatever order the messages come in, and a
resume given while a scheduler was down is not undone when it comes back.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

from zcron import protocol
from zcron.clock import Clock
from zcron.errors import ProtocolError
from zcron.mesh import PeerMesh

log = logging.getLogger("zcron.scheduler")
MAX_PAUSES = 100_000  # entries kept (paused or resumed jobs): the ledger map stays bounded
MAX_PAUSE_AGE_S = 20 * 366 * 86400.0  # a pause may be old, but not older than this
REQUEST_EVERY_S = 1.0  # at most one full-map request per peer per this, however they differ


class Pause(NamedTuple):
    """One job's latest pause or resume: ordered by stamp first (last writer wins)."""

    stamp: float  # wall clock of the scheduler that took the request
    paused: bool
    by: str  # the client key that asked

    def wire(self, job: str) -> list:
        return [job, self.paused, self.stamp, self.by]


class PausesFull(ValueError):
    """MAX_PAUSES entries are kept already: a pause of one more job is refused."""


class Pauses:
    """The map, its digest, and LWW merge; `save` persists the entries that changed."""

    def __init__(
        self, saved: dict[str, Pause], save: Callable[[dict[str, Pause]], None]
    ) -> None:
        self.entries = dict(saved)
        self.save = save
        self._digest: str | None = None

    def is_paused(self, job: str) -> bool:
        entry = self.entries.get(job)
        return entry is not None and entry.paused

    def get(self, job: str) -> Pause | None:
        return self.entries.get(job)

    def paused(self) -> dict[str, Pause]:
        return {job: e for job, e in self.entries.items() if e.paused}

    def set(self, job: str, paused: bool, stamp: float, by: str) -> Pause:
        """A client's pause or resume; an entry already in that state is kept as it is."""
        current = self.entries.get(job)
        if current is not None and current.paused == paused:
            return current
        if current is not None:  # newer than what we hold: our clock may be behind its writer's
            stamp = max(stamp, current.stamp + 1e-6)
        _, refused = self.merge({job: Pause(stamp, paused, by)})
        if refused:
            raise PausesFull(f"{MAX_PAUSES} jobs have a pause or resume recorded already: "
                             f"{job!r} cannot be paused")  # fmt: skip
        return self.entries[job]

    def merge(self, incoming: dict[str, Pause]) -> tuple[list[str], list[str]]:
        """Keep the newer entry of each job; persist them. (The jobs that changed, the new
        jobs refused because MAX_PAUSES entries are kept already.)"""
        changed = {job: e for job, e in incoming.items()
                   if job not in self.entries or e > self.entries[job]}  # fmt: skip
        new = [job for job in changed if job not in self.entries]
        refused = new[max(0, MAX_PAUSES - len(self.entries)):]
        for job in refused:
            del changed[job]
        if changed:
            self.save(changed)
            self.entries.update(changed)
            self._digest = None
        return list(changed), refused

    def digest(self) -> str:
        """A short digest of the whole map ("" when empty): equal maps, equal digests."""
        if self._digest is None:
            text = "\n".join(f"{job}\t{e.paused:d}\t{e.stamp!r}\t{e.by}"
                             for job, e in sorted(self.entries.items()))  # fmt: skip
            self._digest = hashlib.sha256(text.encode()).hexdigest()[:16] if text else ""
        return self._digest

    def wire(self, jobs: Iterable[str] | None = None) -> list[list]:
        """Entries as `pauses` messages carry them (all, or those of `jobs`)."""
        names = self.entries if jobs is None else jobs
        return [self.entries[job].wire(job) for job in names if job in self.entries]


def from_wire(entries: list[list], now: float, ahead_s: float) -> dict[str, Pause]:
    """Entries of a `pauses` message (their shape checked by protocol.decode), each stamp
    within [now - MAX_PAUSE_AGE_S, now + ahead_s]: a stamp far ahead would win every
    merge for good (ProtocolError)."""
    for _, _, stamp, _ in entries:
        protocol.check_window(stamp, now, MAX_PAUSE_AGE_S, ahead_s, "pauses stamp")
    return {job: Pause(float(stamp), paused, by) for job, paused, stamp, by in entries}



class PauseSync:
    """The pauses' side of the peer protocol: a change goes to every peer at once; a peer
    whose heartbeat digest differs from ours is asked for its whole map, which we merge."""

    def __init__(
        self, me: str, pauses: Pauses, mesh: PeerMesh, clock: Clock, ahead_s: float,
        reject: Callable[[str], None], on_change: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.me, self.pauses, self.mesh, self.clock = me, pauses, mesh, clock
        self.ahead_s, self.reject, self.on_change = ahead_s, reject, on_change
        self.next_request: dict[str, float] = {}  # peer -> monotonic time we may ask again

    def apply(self, job: str, paused: bool, by: str) -> Pause:
        """A client's pause or resume, taken here: kept, then sent to every peer."""
        entry = self.pauses.set(job, paused, self.clock.now(), by)
        self.mesh.broadcast("pauses", scheduler=self.me, entries=self.pauses.wire([job]))
        self.on_change()
        return entry

    def heartbeat_fields(self) -> dict[str, str]:
        """What our heartbeats carry: the map's digest, left out while the map is empty
        (a cluster that never paused a job speaks to schedulers that know no pauses)."""
        digest = self.pauses.digest()
        return {"pauses": digest} if digest else {}

    def on_heartbeat(self, msg: dict) -> None:
        """A peer's map differs from ours: ask for it (it asks for ours in turn)."""
        peer, theirs = msg["scheduler"], msg.get("pauses", "")
        if peer == self.me or peer not in self.mesh.sockets or not theirs:
            return
        now_mono = self.clock.monotonic()
        if theirs == self.pauses.digest() or now_mono < self.next_request.get(peer, -math.inf):
            return
        self.next_request[peer] = now_mono + REQUEST_EVERY_S
        self.mesh.send(peer, "pauses_request", scheduler=self.me)

    def on_request(self, identity: bytes, msg: dict) -> None:
        """Send our whole map to the peer that asked, in parts (each merges on its own)."""
        entries, size = self.pauses.wire(), protocol.PAUSES_PER_PART
        for start in range(0, len(entries), size):
            self.mesh.send(msg["scheduler"], "pauses", scheduler=self.me,
                           entries=entries[start:start + size])  # fmt: skip

    def on_pauses(self, identity: bytes, msg: dict) -> None:
        """A peer's entries: merged, newer wins. A stamp out of its window drops the message."""
        try:
            incoming = from_wire(msg["entries"], self.clock.now(), self.ahead_s)
        except ProtocolError as exc:
            return self.reject(f"dropped pauses from {msg['scheduler']}: {exc}")
        try:
            changed, refused = self.pauses.merge(incoming)
        except ValueError as exc:  # ledger.LedgerFull: kept as it was, asked again later
            return self.reject(f"pauses from {msg['scheduler']} not kept: {exc}")
        if refused:
            self.reject(f"pauses from {msg['scheduler']}: {len(refused)} jobs refused, "
                        f"{MAX_PAUSES} are kept already (first: {refused[0]!r})")  # fmt: skip
        for job in changed[:10]:
            entry = self.pauses.entries[job]
            state = "paused" if entry.paused else "resumed"
            log.info("%s %s by %s (from scheduler %s)", job, state, entry.by, msg["scheduler"])
        if changed:
            self.on_change()
