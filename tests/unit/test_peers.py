"""peers.Membership: liveness, restarts, eligibility, job sets, driven by a FakeClock."""

from __future__ import annotations

from zcron.clock import FakeClock
from zcron.peers import Membership

T0 = 1_700_000_000.0


def beat(peer: str = "s2", since: float = T0, sent: float = T0, **fields: object) -> dict:
    return {"scheduler": peer, "since": since, "sent": sent, "digest": "d", "eligible": True,
            "reason": None, **fields}  # fmt: skip


def members(me: str = "s1") -> Membership:
    m = Membership(me, ["s1", "s2", "s3"], peer_timeout=3.0, since=T0)
    m.my_digest = "d"
    return m


def test_first_heartbeat_and_a_restart_change_the_view_a_repeat_does_not() -> None:
    clock, m = FakeClock(wall=T0), members()
    assert m.heard(beat(), clock.monotonic(), clock.now())
    clock.advance(1.0)
    assert not m.heard(beat(), clock.monotonic(), clock.now())
    assert m.heard(beat(since=T0 + 5), clock.monotonic(), clock.now())  # a new incarnation


def test_a_silent_peer_expires_once_after_peer_timeout() -> None:
    clock, m = FakeClock(wall=T0), members()
    m.heard(beat(), clock.monotonic(), clock.now())
    assert m.next_expiry(clock.monotonic()) == clock.monotonic() + 3.0
    last_check = clock.monotonic()
    clock.advance(2.999)
    assert m.expire(clock.monotonic(), last_check) == []
    last_check = clock.monotonic()
    clock.advance(0.002)
    assert m.expire(clock.monotonic(), last_check) == ["s2"]
    assert m.expire(clock.monotonic() + 1, clock.monotonic()) == []
    assert m.visible(clock.monotonic()) == {"s1"}


def test_eligible_at_needs_live_eligible_and_since_reached() -> None:
    clock, m = FakeClock(wall=T0), members()
    m.heard(beat("s2", since=T0 + 10), clock.monotonic(), clock.now())
    m.heard(beat("s3", eligible=False, reason="clock"), clock.monotonic(), clock.now())
    assert m.eligible_at(T0 + 9, clock.monotonic()) == {"s1"}
    assert m.eligible_at(T0 + 10, clock.monotonic()) == {"s1", "s2"}
    m.self_eligible = False
    assert m.eligible_at(T0 + 10, clock.monotonic()) == {"s2"}


def test_clock_offset_is_the_peers_wall_clock_minus_ours() -> None:
    clock, m = FakeClock(wall=T0), members()
    clock.step_wall(-2.5)
    m.heard(beat(sent=T0), clock.monotonic(), clock.now())
    assert m.peers["s2"].clock_offset == 2.5


def test_most_peers_far_off_steps_us_down() -> None:
    clock, m = FakeClock(wall=T0), members()
    m.heard(beat("s2", sent=T0 + 4), clock.monotonic(), clock.now())
    m.heard(beat("s3", sent=T0 + 4), clock.monotonic(), clock.now())
    m.check_clock(1.0, clock.monotonic())
    assert not m.self_eligible
    m.heard(beat("s3", sent=T0), clock.monotonic(), clock.now())
    m.check_clock(1.0, clock.monotonic())  # one of two far off is not most
    assert m.self_eligible and m.self_reason is None


def test_a_peer_with_another_job_set_knows_only_its_names_once_they_arrive() -> None:
    clock, m = FakeClock(wall=T0), members()
    m.heard(beat(digest="other"), clock.monotonic(), clock.now())
    assert m.needs_names(clock.monotonic()) == ["s2"]
    assert m.knows("s2", "mine")  # assumed until its names arrive
    assert not m.digests_agree(clock.monotonic())
    names = {"scheduler": "s2", "digest": "other", "parts": 2}
    assert not m.note_names({**names, "part": 0, "names": ["a"]})
    assert m.note_names({**names, "part": 1, "names": ["b"]})
    assert m.knows("s2", "a") and m.knows("s2", "b") and not m.knows("s2", "mine")
    assert m.needs_names(clock.monotonic()) == []


def test_heartbeats_from_unconfigured_schedulers_are_ignored() -> None:
    clock, m = FakeClock(wall=T0), members()
    assert not m.heard(beat("stranger"), clock.monotonic(), clock.now())
    assert "stranger" not in m.peers
