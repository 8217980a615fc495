"""The pauses map (zcron/pauses.py): last writer wins, digests, bounds, and the peer side
driven by hand on a fake clock with a recording mesh."""

from __future__ import annotations

from pathlib import Path

import pytest

from zcron import pauses as pauses_module
from zcron.clock import FakeClock
from zcron.errors import ProtocolError
from zcron.ledger import TickLedger
from zcron.pauses import Pause, Pauses, PausesFull, PauseSync, from_wire
from zcron.protocol import decode, encode

T0 = 1_800_000_000.0


def fresh() -> Pauses:
    return Pauses({}, lambda changed: None)


class RecordingMesh:
    """What PauseSync sends, without sockets."""

    def __init__(self, peers: tuple[str, ...] = ("b", "c")) -> None:
        self.sockets = dict.fromkeys(peers)
        self.sent: list[tuple[str | None, str, dict]] = []

    def send(self, peer: str, kind: str, **fields: object) -> None:
        self.sent.append((peer, kind, fields))

    def broadcast(self, kind: str, **fields: object) -> None:
        self.sent.append((None, kind, fields))


def test_the_newer_entry_wins_whatever_order_they_come_in() -> None:
    old, new = Pause(T0, True, "cli"), Pause(T0 + 5, False, "ops")
    first, second = fresh(), fresh()
    first.merge({"j": old}), first.merge({"j": new})
    second.merge({"j": new}), second.merge({"j": old})
    assert first.entries == second.entries == {"j": new}
    assert first.digest() == second.digest() != ""


def test_equal_stamps_break_the_tie_the_same_way_everywhere() -> None:
    a, b = Pause(T0, True, "cli"), Pause(T0, False, "cli")
    one, two = fresh(), fresh()
    one.merge({"j": a}), one.merge({"j": b})
    two.merge({"j": b}), two.merge({"j": a})
    assert one.entries == two.entries and one.digest() == two.digest()


def test_digest_is_empty_for_an_empty_map_and_changes_with_any_entry() -> None:
    pauses = fresh()
    assert pauses.digest() == ""
    pauses.set("j", True, T0, "cli")
    paused = pauses.digest()
    pauses.set("j", False, T0 + 1, "cli")
    assert paused and pauses.digest() not in ("", paused)


def test_a_resume_is_newer_than_the_pause_even_when_our_clock_is_behind() -> None:
    pauses = fresh()
    pauses.merge({"j": Pause(T0 + 30, True, "cli")})  # written by a peer whose clock is ahead
    entry = pauses.set("j", False, T0, "ops")
    assert not entry.paused and entry.stamp > T0 + 30 and not pauses.is_paused("j")


def test_pausing_a_paused_job_keeps_its_entry() -> None:
    pauses = fresh()
    first = pauses.set("j", True, T0, "cli")
    assert pauses.set("j", True, T0 + 9, "ops") == first


def test_the_map_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pauses_module, "MAX_PAUSES", 2)
    pauses = fresh()
    pauses.set("a", True, T0, "cli")
    changed, refused = pauses.merge({"b": Pause(T0, True, "x"), "c": Pause(T0, True, "x")})
    assert (changed, refused) == (["b"], ["c"])
    with pytest.raises(PausesFull, match="'d' cannot be paused"):
        pauses.set("d", True, T0, "cli")
    assert pauses.set("a", False, T0 + 1, "cli").paused is False  # known jobs still change


def test_entries_survive_in_the_ledger(tmp_path: Path) -> None:
    ledger = TickLedger(str(tmp_path / "ledger"))
    pauses = Pauses(ledger.pauses(), ledger.save_pauses)
    pauses.set("j", True, T0, "cli")
    pauses.set("k", True, T0, "cli")
    pauses.set("k", False, T0 + 1, "ops")
    ledger.close()
    again = TickLedger(str(tmp_path / "ledger"))
    assert Pauses(again.pauses(), again.save_pauses).entries == pauses.entries
    again.close()


def test_stamps_far_ahead_or_out_of_shape_are_refused() -> None:
    with pytest.raises(ProtocolError, match="out_of_window|from now"):
        from_wire([["j", True, T0 + 3600, "cli"]], T0, 3.0)
    assert from_wire([["j", True, T0 - 86400 * 365, "cli"]], T0, 3.0)["j"].paused
    for bad in (["j", 1, T0, "cli"], ["bad name", True, T0, "cli"], ["j", True, "x", "cli"],
                ["j", True, float("nan"), "cli"], ["j", True, T0]):  # fmt: skip
        with pytest.raises(ProtocolError):
            decode(encode("pauses", scheduler="b", entries=[bad]))


def sync(clock: FakeClock, pauses: Pauses | None = None) -> tuple[PauseSync, RecordingMesh, list]:
    mesh, rejects = RecordingMesh(), []
    return PauseSync("a", pauses or fresh(), mesh, clock, 3.0, rejects.append), mesh, rejects


def test_a_client_change_goes_to_every_peer_at_once() -> None:
    peer, mesh, _ = sync(FakeClock(T0))
    peer.apply("j", True, "cli")
    assert mesh.sent == [(None, "pauses", {"scheduler": "a", "entries": [["j", True, T0, "cli"]]})]
    assert peer.heartbeat_fields() == {"pauses": peer.pauses.digest()}


def test_a_differing_digest_asks_for_the_map_at_most_once_a_second() -> None:
    clock = FakeClock(T0)
    peer, mesh, _ = sync(clock)
    beat = {"scheduler": "b", "pauses": "0123456789abcdef"}
    for _ in range(5):
        peer.on_heartbeat(beat)
        clock.advance(0.1)
    assert mesh.sent == [("b", "pauses_request", {"scheduler": "a"})]
    clock.advance(1.0)
    peer.on_heartbeat(beat)
    assert len(mesh.sent) == 2
    peer.on_heartbeat({"scheduler": "b"})  # it has none: it asks us, not we it
    peer.on_heartbeat({"scheduler": "zz", "pauses": "1"})  # not a configured peer
    assert len(mesh.sent) == 2


def test_two_schedulers_converge_through_requests_and_answers() -> None:
    clock = FakeClock(T0)
    a, a_mesh, _ = sync(clock)
    b, b_mesh, _ = sync(clock)
    a.apply("j", True, "cli")  # b was down: it missed the broadcast
    clock.advance(1)
    b.apply("k", True, "ops")
    b.on_request(b"", {"scheduler": "a"})
    a.on_pauses(b"", b_mesh.sent[-1][2])
    a.on_request(b"", {"scheduler": "b"})
    b.on_pauses(b"", a_mesh.sent[-1][2])
    assert a.pauses.entries == b.pauses.entries and set(a.pauses.paused()) == {"j", "k"}
    assert a.pauses.digest() == b.pauses.digest()


def test_a_forged_stamp_drops_the_message_and_changes_nothing() -> None:
    clock = FakeClock(T0)
    peer, _, rejects = sync(clock)
    peer.on_pauses(b"", {"scheduler": "b", "entries": [["j", True, T0 + 10**6, "x"]]})
    assert peer.pauses.entries == {} and len(rejects) == 1
