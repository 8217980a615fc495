"""Who fires a job: rendezvous (highest-random-weight) hashing over the eligible schedulers.

Every scheduler computes the same owner from the same set of peers, with no leader and
no shared state. When a peer leaves, only the jobs it owned move (each to the peer with
the next-highest weight); when it returns, exactly those move back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable


def weight(peer: str, job: str) -> int:
    """The pseudo-random weight of a (peer, job) pair; the same on every host."""
    digest = hashlib.blake2b(f"{peer}\0{job}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(job: str, peers: Iterable[str]) -> str | None:
    """The peer that owns `job` among `peers` (None when there is none)."""
    best, best_weight = None, -1
    for peer in peers:
        w = weight(peer, job)
        if w > best_weight or (w == best_weight and best is not None and peer < best):
            best, best_weight = peer, w
    return best


def has_quorum(visible: Collection[str], configured: Collection[str]) -> bool:
    """Whether the visible schedulers (ourselves included) are a majority of the configured."""
    return len(set(visible) & set(configured)) * 2 > len(set(configured))


class OwnerCache:
    """owner_of for many jobs under one peer set, recomputed only when the set changes."""

    def __init__(self) -> None:
        self.peers: frozenset[str] = frozenset()
        self.owners: dict[str, str | None] = {}

    def owner(self, job: str, peers: frozenset[str]) -> str | None:
        if len(peers) < 2:  # nothing to choose: no hashing, and no entry for every job
            return next(iter(peers), None)
        if peers != self.peers:
            self.peers, self.owners = peers, {}
        if job not in self.owners:
            self.owners[job] = owner_of(job, peers)
        return self.owners[job]
