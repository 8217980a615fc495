"""Ownership, view changes, catch-up and clock-skew step-down, driven by a FakeClock."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from zcron.clock import FakeClock
from zcron.job import Job
from zcron.ledger import TickLedger
from zcron.peers import Membership
from zcron.plan import Plan
from zcron.ring import owner_of
from zcron.takeover import Takeover, caught_up, tick_owner, unfired_ticks

T0 = 1_700_000_000.0  # a whole second
PEER_TIMEOUT_S = 3.0


def every_second(name: str = "j", **fields: object) -> Job:
    return Job(name=name, schedule="* * * * * *", timezone="UTC", command="true",
               source="t:1", **fields)  # fmt: skip


def job_owned_by(peer: str, peers: list[str], **fields: object) -> Job:
    """A job whose rendezvous owner among `peers` is `peer`."""
    name = next(f"job{i}" for i in range(1000) if owner_of(f"job{i}", peers) == peer)
    return every_second(name, **fields)


class FakeMesh:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def broadcast(self, kind: str, **fields: object) -> None:
        self.sent.append((kind, fields))

    def send(self, peer: str, kind: str, **fields: object) -> None:
        self.sent.append((kind, {"to": peer, **fields}))


class Cluster:
    """Scheduler s1's parts, and what it fired."""

    def __init__(self, tmp_path: Path, me: str = "s1", ids: tuple[str, ...] = ("s1", "s2")):
        cluster = SimpleNamespace(schedulers=dict.fromkeys(ids, "tcp://x"), heartbeat=1.0,
                                  peer_timeout=PEER_TIMEOUT_S, max_clock_skew=1.0)  # fmt: skip
        self.clock = FakeClock(wall=T0)
        self.members = Membership(me, list(ids), PEER_TIMEOUT_S, since=T0 - 100)
        self.ledger = TickLedger(str(tmp_path / "ledger"))
        self.plan = Plan()
        self.mesh = FakeMesh()
        self.fired: list[tuple[str, float]] = []
        config = SimpleNamespace(cluster=cluster, sink=SimpleNamespace(retention=14 * 86400.0))
        self.rejected: list[str] = []
        self.takeover = Takeover(config, self.clock, self.members,
                                 self.ledger, self.plan, self.mesh, {"caught_up": 0,
                                 "takeovers": 0}, lambda job, tick: self.fired.append(
                                     (job.name, tick)), self.rejected.append)  # fmt: skip

    def add(self, job: Job, next_instant: float) -> None:
        self.plan.jobs[job.name] = job
        self.plan.plan(job, next_instant)

    def heartbeat(self, peer: str, since: float = T0 - 100, sent: float | None = None,
                  eligible: bool = True) -> None:  # fmt: skip
        self.takeover.on_heartbeat(b"", {
            "scheduler": peer, "since": since, "sent": self.clock.now() if sent is None else sent,
            "digest": self.members.my_digest, "eligible": eligible, "reason": None})  # fmt: skip

    def step(self) -> None:
        now, now_mono = self.clock.now(), self.clock.monotonic()
        self.takeover.expire_peers(now, now_mono)
        self.takeover.change_view_if_due(now, now_mono)
        self.takeover.heartbeat_if_due(now, now_mono)


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def test_unfired_ticks_keep_all_last_or_none_of_the_late_ones() -> None:
    ticks = {policy: unfired_ticks(every_second(catch_up=policy), T0, T0 + 5, now=T0 + 3.5)
             for policy in ("all", "last", "none")}  # fmt: skip
    assert ticks["all"] == [T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    assert ticks["last"] == [T0 + 3, T0 + 4]  # the ones still to come are never dropped
    assert ticks["none"] == [T0 + 4]


def test_unfired_ticks_older_than_misfire_grace_are_dropped() -> None:
    assert unfired_ticks(every_second(misfire_grace=1.0), T0, T0 + 4, now=T0 + 3.5) == [T0 + 3]


def test_nothing_is_unfired_without_a_known_fire_or_for_a_disabled_job() -> None:
    assert unfired_ticks(every_second(), None, T0 + 4, now=T0 + 3.5) == []
    assert unfired_ticks(every_second(enabled=False), T0, T0 + 4, now=T0 + 3.5) == []


def test_caught_up_when_no_tick_lies_between_the_last_fire_and_this_one() -> None:
    assert caught_up(every_second(), T0, before=T0 + 1)
    assert not caught_up(every_second(), T0, before=T0 + 2)
    assert not caught_up(every_second(), None, before=T0 + 1)


def test_a_newcomer_owns_ticks_only_from_its_since(cluster: Cluster) -> None:
    job = job_owned_by("s2", ["s1", "s2"])
    cluster.heartbeat("s2", since=T0 + 10)
    now_mono = cluster.clock.monotonic()
    assert tick_owner(job, T0 + 9, cluster.members, now_mono) == "s1"
    assert tick_owner(job, T0 + 10, cluster.members, now_mono) == "s2"


def test_a_late_tick_with_nobody_eligible_then_belongs_to_the_owner_as_of_now(
    cluster: Cluster,
) -> None:
    cluster.members.since = T0
    now_mono = cluster.clock.monotonic()
    assert tick_owner(every_second(), T0 - 5, cluster.members, now_mono) is None
    assert tick_owner(every_second(), T0 - 5, cluster.members, now_mono, as_of=T0) == "s1"


def test_live_owners_ticks_are_not_fired_here(cluster: Cluster) -> None:
    job = job_owned_by("s2", ["s1", "s2"])
    cluster.heartbeat("s2")
    cluster.ledger.note(job.name, T0)
    cluster.add(job, T0 + 4)
    cluster.clock.advance(2.5)
    cluster.step()
    assert cluster.fired == []


@pytest.mark.parametrize(("policy", "expected"), [("all", [1, 2, 3]), ("last", [3]), ("none", [])])
def test_killed_owners_unfired_ticks_fire_here_per_catch_up(
    cluster: Cluster, policy: str, expected: list[int]
) -> None:
    job = job_owned_by("s2", ["s1", "s2"], catch_up=policy)
    cluster.heartbeat("s2")
    cluster.ledger.note(job.name, T0)  # s2's last claim
    cluster.add(job, T0 + 4)  # our heap has walked up to here
    cluster.clock.advance(PEER_TIMEOUT_S + 0.5)
    cluster.step()
    assert cluster.fired == [(job.name, T0 + s) for s in expected]
    assert cluster.takeover.counters["takeovers"] == 1  # s2 taken over, ticks unfired or not


def test_catch_up_before_a_tick_fires_only_the_older_ticks_in_order(cluster: Cluster) -> None:
    job = every_second()
    cluster.ledger.note(job.name, T0)
    cluster.add(job, T0 + 5)
    cluster.clock.advance(3.0)
    fired = cluster.takeover.catch_up(job, T0 + 3, cluster.clock.monotonic(), before=T0 + 3)
    assert fired == 2
    assert cluster.fired == [(job.name, T0 + 1), (job.name, T0 + 2)]


def test_ticks_waiting_here_for_a_slot_are_not_caught_up_again(cluster: Cluster) -> None:
    job = every_second()
    cluster.ledger.note(job.name, T0)
    cluster.plan.queued[job.name] = T0 + 2
    cluster.add(job, T0 + 4)
    cluster.clock.advance(3.5)
    cluster.takeover.view_changed(cluster.clock.now(), cluster.clock.monotonic(), "test")
    assert cluster.fired == [(job.name, T0 + 3)]


def test_claims_and_accepted_ticks_are_never_fired_again(cluster: Cluster) -> None:
    job = job_owned_by("s2", ["s1", "s2"])
    cluster.heartbeat("s2")
    cluster.ledger.note(job.name, T0)
    cluster.add(job, T0 + 4)
    cluster.takeover.on_fired(b"", {"ticks": [[job.name, T0 + 3], ["unknown", T0]]})
    cluster.clock.advance(PEER_TIMEOUT_S + 0.5)
    cluster.step()
    assert cluster.fired == []
    assert cluster.ledger.last("unknown") is None


def test_ticks_outside_the_window_are_never_noted(cluster: Cluster) -> None:
    """A forged claim far ahead (or far back) would hide every tick before it for good."""
    job = job_owned_by("s1", ["s1"])
    cluster.add(job, T0 + 1)
    for tick in (T0 + 600, T0 - 30 * 86400):
        cluster.takeover.on_fired(b"", {"ticks": [[job.name, tick]]})
    assert cluster.ledger.last(job.name) is None and len(cluster.rejected) == 2


def test_a_heartbeat_under_our_own_id_changes_no_view(cluster: Cluster) -> None:
    beat = {"scheduler": "s1", "since": T0, "sent": T0, "digest": "", "eligible": True}
    cluster.takeover.on_heartbeat(b"", {**beat, "reason": None})
    assert "our own id" in cluster.rejected[0]


def test_a_view_change_is_due_at_a_joining_peers_since(cluster: Cluster) -> None:
    job = job_owned_by("s2", ["s1", "s2"])
    cluster.heartbeat("s2", since=T0 + 2)
    assert cluster.takeover.next_view_change() == T0 + 2
    cluster.clock.advance(2.0)
    cluster.step()
    assert cluster.takeover.next_view_change() is None
    assert cluster.takeover.owner(job, T0 + 2, cluster.clock.monotonic()) == "s2"


def test_quorum_jobs_fire_only_with_a_majority_visible(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ids=("s1", "s2", "s3"))
    job = every_second(quorum=True)
    now_mono = cluster.clock.monotonic()
    assert not cluster.takeover.may_fire(job, T0 + 1, now_mono)
    cluster.heartbeat("s2", since=T0 + 100)  # visible, not yet eligible: s1 still owns
    assert cluster.takeover.may_fire(job, T0 + 1, now_mono)


def test_the_higher_id_steps_down_when_its_clock_is_off_from_its_only_peer(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, me="s2")
    cluster.heartbeat("s1")
    cluster.step()
    assert cluster.members.self_eligible
    cluster.clock.step_wall(-5.0)  # our clock steps back: the peer looks 5 s ahead
    cluster.heartbeat("s1", sent=T0)  # sent when its clock read T0 and ours T0 - 5
    cluster.clock.advance(1.0)
    cluster.step()
    assert not cluster.members.self_eligible
    assert "clock off by -5" in cluster.members.self_reason
    kind, beat = cluster.mesh.sent[-1]
    assert (kind, beat["eligible"]) == ("heartbeat", False)


def test_a_clean_stop_tells_the_peers_at_once(cluster: Cluster) -> None:
    cluster.takeover.leave()
    kind, beat = cluster.mesh.sent[-1]
    assert (kind, beat["eligible"], beat["reason"]) == ("heartbeat", False, "stopping")


def test_the_lower_id_keeps_firing_when_its_only_peer_disagrees(cluster: Cluster) -> None:
    cluster.heartbeat("s2", sent=T0 + 5.0)
    cluster.step()
    assert cluster.members.self_eligible
