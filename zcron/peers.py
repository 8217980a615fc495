"""Scheduler membership: heartbeats, liveness, incarnations, job-set digests, clock offsets.

Each scheduler heartbeats every peer with `since`: the instant from which it fires ticks
(its start plus a warm-up long enough to hear every live peer). A peer is *eligible* for
a tick T when it is live (heard within peer_timeout), says it is eligible (its clock is not
off), and its `since` <= T. Every scheduler computes the owner of tick T from the same
eligible set, so a restarted scheduler takes its jobs back exactly at its `since`: ticks
before it belong to the others, ticks from it on to the newcomer (no gap, no overlap).
A new `since` from a known peer means it restarted (a new incarnation).

Liveness is mutual. Each heartbeat echoes, per peer heard, the `sent` of the last heartbeat
got from it. A peer that has not echoed one of ours sent within `peer_timeout - heartbeat`
is dead to us even while we hear it: it may have declared us dead (it stops hearing us at
the latest `peer_timeout` after the heartbeat it echoed), and we step out of its view a
heartbeat before it takes our ticks over. So a one-way cut, where one side still hears
the other, gives both sides the same view instead of two owners of one job.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Peer:
    """One other scheduler as this one sees it."""

    id: str
    since: float | None = None  # None: never heard from
    last_heard: float = float("-inf")  # monotonic
    digest: str | None = None
    eligible: bool = True  # its own word: False when it found its clock off
    reason: str | None = None
    clock_offset: float | None = None  # its wall clock minus ours, at receipt
    job_names: frozenset[str] | None = None  # when its digest differs from ours
    names_digest: str | None = None  # the digest job_names belong to
    parts: dict[int, list[str]] = field(default_factory=dict)
    echo_mono: float | None = None  # when we sent the heartbeat it last echoed; None: no echoes
    sent: float | None = None  # `sent` of its last heartbeat, for our echo
    quorum_since: float | None = None  # its word: since when it has seen a majority
    workers: frozenset[str] = frozenset()  # its word: the workers live to it


SENT_KEPT = 256  # our heartbeats remembered for echoes: peer_timeout / heartbeat is ~5


class Membership:
    """What this scheduler knows of its peers, and who may fire a tick."""

    def __init__(
        self, me: str, configured: list[str], peer_timeout: float, since: float,
        heartbeat: float = 0.0,
    ) -> None:  # fmt: skip
        self.me = me
        self.configured = list(configured)
        self.peer_timeout = peer_timeout
        self.echo_timeout = peer_timeout - heartbeat  # see the module's docstring
        self.sent_at: dict[float, float] = {}  # our heartbeats: sent (wall) -> monotonic
        self.since = since
        self.my_digest = ""
        self.self_eligible = True
        self.self_reason: str | None = None
        self.peers = {pid: Peer(pid) for pid in configured if pid != me}

    def note_sent(self, sent: float, now_mono: float) -> None:
        """Remember one of our heartbeats, to know when a peer's echo of it was sent."""
        self.sent_at[sent] = now_mono
        if len(self.sent_at) > SENT_KEPT:
            del self.sent_at[next(iter(self.sent_at))]

    def echoes(self, now_mono: float) -> dict[str, float]:
        """For our heartbeat: each peer heard within peer_timeout -> its last `sent`."""
        return {p.id: p.sent for p in self.peers.values()
                if p.sent is not None and now_mono - p.last_heard <= self.peer_timeout}  # fmt: skip

    def heard(self, msg: dict, now_mono: float, now_wall: float) -> bool:
        """Apply a heartbeat; True when the view changed (a peer came, came back, restarted,
        or stopped hearing us)."""
        peer = self.peers.get(msg["scheduler"])
        if peer is None:
            return False  # not in our [cluster] schedulers: ignored (config disagreement)
        was_live = self.is_live(peer, now_mono)
        restarted = peer.since is not None and peer.since != msg["since"]
        changed = restarted or peer.eligible != msg["eligible"]
        peer.since, peer.last_heard, peer.sent = msg["since"], now_mono, msg["sent"]
        peer.eligible, peer.reason = msg["eligible"], msg["reason"]
        peer.digest, peer.clock_offset = msg["digest"], msg["sent"] - now_wall
        peer.quorum_since = msg.get("quorum_since")
        peer.workers = frozenset(msg.get("workers", ()))
        if "heard" in msg:  # a peer of an older version sends no echoes: hearing it is enough
            echoed = msg["heard"].get(self.me)
            peer.echo_mono = self.sent_at.get(echoed, float("-inf")) if echoed else float("-inf")
        if peer.digest == self.my_digest:
            peer.job_names = None
        return changed or was_live != self.is_live(peer, now_mono)

    def refresh(self, stalled_from: float, now_mono: float) -> None:
        """After our own stall: each peer live when it began gets a fresh peer_timeout to be
        heard (its silence was ours); one dead in truth is declared dead that much later."""
        for peer in self.live(stalled_from):
            peer.last_heard = max(peer.last_heard, now_mono)
            if peer.echo_mono is not None:
                peer.echo_mono = max(peer.echo_mono, now_mono)

    def live_until(self, peer: Peer) -> float:
        """The monotonic time until which the peer counts as live: heard within
        peer_timeout, and (when it echoes) it heard one of ours within echo_timeout."""
        until = peer.last_heard + self.peer_timeout
        if peer.echo_mono is not None:
            until = min(until, peer.echo_mono + self.echo_timeout)
        return until

    def is_live(self, peer: Peer, now_mono: float) -> bool:
        return now_mono <= self.live_until(peer)

    def expire(self, now_mono: float, last_check: float) -> list[str]:
        """Peers that stopped being live since the previous check."""
        return [p.id for p in self.peers.values() if last_check <= self.live_until(p) < now_mono]

    def next_expiry(self, now_mono: float) -> float | None:
        """The monotonic time at which the next live peer would be declared dead."""
        times = [self.live_until(p) for p in self.live(now_mono)]
        return min(times) if times else None

    def hear_worker(self, worker_id: str, now_mono: float) -> list[str]:
        """The live peers that say they hear this worker."""
        return [p.id for p in self.live(now_mono) if worker_id in p.workers]

    def last_heard_wall(self, peer_id: str, now_mono: float, now_wall: float) -> float:
        """When we last heard the peer, on our wall clock."""
        return now_wall - (now_mono - self.peers[peer_id].last_heard)

    def live(self, now_mono: float) -> list[Peer]:
        return [p for p in self.peers.values() if self.is_live(p, now_mono)]

    def visible(self, now_mono: float) -> set[str]:
        """Schedulers we can see, ourselves included (for quorum)."""
        return {self.me, *(p.id for p in self.live(now_mono))}

    def eligible_at(self, tick: float, now_mono: float) -> frozenset[str]:
        """The schedulers that may own `tick`."""
        ids = {
            p.id
            for p in self.live(now_mono)
            if p.eligible and p.since is not None and p.since <= tick
        }
        if self.self_eligible and self.since <= tick:
            ids.add(self.me)
        return frozenset(ids)

    def knows(self, peer_id: str, job: str) -> bool:
        """Whether a peer has this job: its job set matches ours, or its names list it.

        Until a differing peer's names arrive we assume it has ours; their arrival is a
        view change, which catches up any tick that assumption left unfired.
        """
        if peer_id == self.me:
            return True
        peer = self.peers[peer_id]
        if peer.digest == self.my_digest or peer.names_digest != peer.digest:
            return True
        return peer.job_names is not None and job in peer.job_names

    def needs_names(self, now_mono: float) -> list[str]:
        """Live peers whose job set differs from ours and whose names we lack."""
        return [
            p.id
            for p in self.live(now_mono)
            if p.digest != self.my_digest and p.names_digest != p.digest
        ]

    def note_names(self, msg: dict) -> bool:
        """Collect one part of a peer's job names; True once complete for its digest."""
        peer = self.peers.get(msg["scheduler"])
        if peer is None:
            return False
        if msg["part"] == 0:
            peer.parts = {}
        peer.parts[msg["part"]] = msg["names"]
        if len(peer.parts) < msg["parts"]:
            return False
        peer.job_names = frozenset(n for part in peer.parts.values() for n in part)
        peer.names_digest, peer.parts = msg["digest"], {}
        return True

    def check_clock(self, max_skew: float, now_mono: float) -> None:
        """Stop being eligible when our clock is off from most live schedulers' clocks.

        Off = more than half of the live peers differ from us by more than max_skew; with
        a single peer the scheduler with the higher id steps down, so two never both stop.
        """
        live = [p for p in self.live(now_mono) if p.clock_offset is not None]
        far = [p for p in live if abs(p.clock_offset) > max_skew]
        if len(live) == 1:
            off = bool(far) and self.me > live[0].id
        else:
            off = len(far) * 2 > len(live)
        self.self_eligible = not off
        self.self_reason = None
        if off:
            median = statistics.median(p.clock_offset for p in far)
            self.self_reason = f"clock off by {-median:+.3f}s from peers (max {max_skew}s)"

    def digests_agree(self, now_mono: float) -> bool:
        return all(p.digest == self.my_digest for p in self.live(now_mono))
