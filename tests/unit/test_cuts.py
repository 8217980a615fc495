"""Cuts between schedulers, on a FakeClock: mutual liveness from heartbeat echoes (one-way
cuts), the minority side's rejoin at the heal, and quorum ticks a lost owner may have sent."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_peers import T0, beat
from tests.unit.test_takeover import PEER_TIMEOUT_S, Cluster, job_owned_by
from zcron.clock import FakeClock
from zcron.peers import Membership

HEARTBEAT_S = 1.0  # as the takeover tests' cluster


def members() -> tuple[FakeClock, Membership]:
    m = Membership("s1", ["s1", "s2", "s3"], PEER_TIMEOUT_S, since=T0, heartbeat=HEARTBEAT_S)
    m.my_digest = "d"
    return FakeClock(wall=T0), m


def test_a_peer_that_no_longer_echoes_us_is_out_of_the_view_a_heartbeat_before_it_drops_us():
    clock, m = members()
    m.note_sent(clock.now(), clock.monotonic())
    echoed, sent_mono = clock.now(), clock.monotonic()
    clock.advance(0.5)
    assert m.heard(beat(sent=clock.now(), heard={"s1": echoed}), clock.monotonic(), clock.now())
    # It keeps talking but stops hearing us: echoes of our last heartbeat it got, sent at T0.
    clock.advance(1.0)
    m.heard(beat(sent=clock.now(), heard={"s1": echoed}), clock.monotonic(), clock.now())
    assert m.next_expiry(clock.monotonic()) == sent_mono + PEER_TIMEOUT_S - HEARTBEAT_S
    last_check = clock.monotonic()
    clock.advance(0.6)  # 2.1 s after the heartbeat it echoed: past peer_timeout - heartbeat
    assert m.expire(clock.monotonic(), last_check) == ["s2"]
    assert m.visible(clock.monotonic()) == {"s1"}


def test_a_heartbeat_that_does_not_echo_us_changes_the_view_at_once():
    clock, m = members()
    m.note_sent(clock.now(), clock.monotonic())
    m.heard(beat(sent=clock.now(), heard={"s1": clock.now()}), clock.monotonic(), clock.now())
    assert m.visible(clock.monotonic()) == {"s1", "s2"}
    clock.advance(0.1)
    assert m.heard(beat(sent=clock.now(), heard={}), clock.monotonic(), clock.now())
    assert m.visible(clock.monotonic()) == {"s1"}


def test_a_peer_without_echoes_an_older_version_is_live_while_heard():
    clock, m = members()
    m.heard(beat(), clock.monotonic(), clock.now())
    assert m.visible(clock.monotonic()) == {"s1", "s2"}


def test_our_heartbeat_echoes_each_peer_heard_within_peer_timeout():
    clock, m = members()
    m.heard(beat("s2", sent=T0 - 0.25), clock.monotonic(), clock.now())
    clock.advance(PEER_TIMEOUT_S + 0.1)
    m.heard(beat("s3", sent=T0 + 3.0), clock.monotonic(), clock.now())
    assert m.echoes(clock.monotonic()) == {"s3": T0 + 3.0}


def three(tmp_path: Path) -> Cluster:
    cluster = Cluster(tmp_path, "s1", ("s1", "s2", "s3"))
    cluster.members.echo_timeout = PEER_TIMEOUT_S - HEARTBEAT_S
    return cluster


def heartbeat(cluster: Cluster, peer: str, **fields: object) -> None:
    now = cluster.clock.now()
    cluster.takeover.on_heartbeat(b"", {
        "scheduler": peer, "since": T0 - 100, "sent": now, "digest": cluster.members.my_digest,
        "eligible": True, "reason": None, **fields})  # fmt: skip


def test_the_minority_side_rejoins_at_the_heal_when_a_peer_kept_a_majority(tmp_path: Path):
    cluster = three(tmp_path)
    for peer in ("s2", "s3"):
        heartbeat(cluster, peer, quorum_since=T0 - 50)
    cluster.step()
    assert cluster.takeover.quorum_since == T0
    cluster.clock.advance(PEER_TIMEOUT_S + 0.5)  # cut off: both fall silent
    cluster.step()
    assert cluster.takeover.quorum_since is None
    assert cluster.takeover.quorum_lost_at == T0 + PEER_TIMEOUT_S + 0.5
    cluster.clock.advance(5.0)
    heartbeat(cluster, "s2", quorum_since=T0 - 50)  # they kept their majority meanwhile
    assert cluster.members.since > cluster.clock.now()  # a new incarnation, warming up
    assert cluster.takeover.counters["rejoins"] == 1
    assert cluster.fired == []  # nothing of the cut caught up


def test_no_side_rejoins_when_none_kept_a_majority(tmp_path: Path):
    cluster = Cluster(tmp_path)  # s1, s2: a cut leaves each alone
    heartbeat(cluster, "s2", quorum_since=T0 - 50)
    cluster.step()
    cluster.clock.advance(PEER_TIMEOUT_S + 0.5)
    cluster.step()
    cluster.clock.advance(5.0)
    heartbeat(cluster, "s2", quorum_since=None)  # it had no majority either
    assert cluster.members.since == T0 - 100
    assert "rejoins" not in cluster.takeover.counters


def test_quorum_ticks_a_lost_owner_may_have_sent_are_suspect_later_ones_are_not(tmp_path: Path):
    cluster = three(tmp_path)
    job = job_owned_by("s2", ["s1", "s2", "s3"], quorum=True)
    for peer in ("s2", "s3"):
        heartbeat(cluster, peer)
    heard = cluster.clock.now()
    cluster.clock.advance(PEER_TIMEOUT_S - 0.1)
    heartbeat(cluster, "s3")
    cluster.clock.advance(0.2)
    cluster.step()  # s2 is dead to us now, s3 live
    takeover, now, mono = cluster.takeover, cluster.clock.now(), cluster.clock.monotonic()
    bound = heard + PEER_TIMEOUT_S + 0.5 + 1.0  # + LEAD_S + max_clock_skew (+ margin)
    assert takeover.maybe_fired_by(job, bound - 0.2, now, mono) == "s2"
    assert takeover.maybe_fired_by(job, bound + 0.2, now, mono) is None
    other = job_owned_by("s3", ["s1", "s2", "s3"], quorum=True)
    assert takeover.maybe_fired_by(other, bound - 0.2, now, mono) is None  # never s2's


def test_peers_say_which_workers_they_hear():
    clock, m = members()
    m.heard(beat("s2", workers=["w1"]), clock.monotonic(), clock.now())
    m.heard(beat("s3", workers=["w2"]), clock.monotonic(), clock.now())
    assert m.hear_worker("w1", clock.monotonic()) == ["s2"]
    clock.advance(PEER_TIMEOUT_S + 0.1)  # what dead peers said counts no more
    assert m.hear_worker("w1", clock.monotonic()) == []
