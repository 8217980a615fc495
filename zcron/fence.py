"""Fencing after a stall (spec §8.9): how long a process may go without turning its loop
before what it was about to do may already have been done by others.

A scheduler's peers take its ticks over once it has been silent for `peer_timeout`; its
last heartbeat can be up to one `heartbeat` old when it stops. So a scheduler that notices
it did not turn its loop for `stall_bound_s` (a SIGSTOP, a stalled VM, a GC-sized pause)
must not act on the view it had: it re-reads what its sockets hold and rejoins as a new
incarnation (peers own the ticks until its warm-up ends). A worker refuses a job whose
dispatch is older than `lease_s`: by then the ticks of a stalled sender may have moved,
and its dispatch, queued in its socket during the stall, is stale.

Clocks: the stall bound is on our own monotonic clock. The lease compares the worker's
wall clock with the sender's (`dispatched`), so worker clocks must agree with the
schedulers' to well within the lease (NTP does: milliseconds); docs/design.md says why
the lease cannot also absorb `max_clock_skew`.
"""

from __future__ import annotations

from zcron.config import ClusterConfig
from zcron.plan import MAX_LEAD_S


class Stalled(Exception):
    """The loop did not turn for longer than the stall bound: fence before acting."""

    def __init__(self, since: float) -> None:
        super().__init__(f"stalled since {since:.3f} (monotonic)")
        self.since = since  # the last moment we know we were awake


def stall_bound_s(cluster: ClusterConfig) -> float:
    """The longest a scheduler may go without turning its loop and still trust its view:
    peers may declare it dead at peer_timeout after its last heartbeat (one heartbeat
    old at most), and a second heartbeat's margin absorbs a busy step."""
    return max(cluster.heartbeat, cluster.peer_timeout - 2 * cluster.heartbeat)


def lease_s(cluster: ClusterConfig) -> float:
    """How old a dispatch may be when a worker takes it: until its sender could have been
    declared dead and its ticks fired by a peer."""
    return max(cluster.heartbeat, cluster.peer_timeout - cluster.heartbeat)


def ahead_bound_s(cluster: ClusterConfig) -> float:
    """How far in the future a tick or a record time from the wire may lie: the longest
    dispatch lead, the clocks' allowed disagreement and a second of margin (spec §7)."""
    return MAX_LEAD_S + cluster.max_clock_skew + 1.0


def is_stale(dispatched: float, now: float, lease: float) -> bool:
    """Whether a dispatch made at `dispatched` (sender's wall clock) is past its lease."""
    return now - dispatched > lease
