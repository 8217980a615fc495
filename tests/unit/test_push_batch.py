"""Pushes read in one loop turn are saved in one LMDB transaction, then answered in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from zcron import protocol
from zcron.clock import FakeClock
from zcron.control import MAX_BATCH, ClientRequests
from zcron.ledger import LedgerFull, TickLedger
from zcron.plan import Plan
from zcron.roles import ANYONE, Roles


def requests(tmp_path: Path) -> tuple[ClientRequests, list[tuple[bytes, dict]], TickLedger]:
    ledger = TickLedger(str(tmp_path / "ledger"))
    sent: list[tuple[bytes, dict]] = []

    def send(identity: bytes, frame: bytes) -> None:
        sent.append((identity, protocol.decode(frame)[1]))

    clock = FakeClock()
    control = ClientRequests(
        "a", clock, Plan(), ledger, job_message=lambda *a: {}, fire_message=lambda *a, **k: None,
        status=lambda: {"jobs": 0}, send=send, roles=Roles({"a": "tcp://x:1"}, {}),
        sender=lambda: ANYONE, cancel_run=lambda *a: None,
    )  # fmt: skip
    return control, sent, ledger


def push(control: ClientRequests, identity: bytes, at: float) -> None:
    args = {"command": ["true"], "pool": "default", "at": at, "timeout": None, "user": None}
    control.on_request(identity, {"op": "push", "args": args})


def count_writes(ledger: TickLedger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    writes: list[int] = []
    real = ledger._write
    monkeypatch.setattr(ledger, "_write", lambda step: (writes.append(1), real(step))[1])
    return writes


def test_a_turn_of_pushes_is_one_transaction_and_replies_follow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control, sent, ledger = requests(tmp_path)
    writes = count_writes(ledger, monkeypatch)
    now = control.clock.now()
    for n in range(50):
        push(control, b"c%d" % (n % 3), now + 60 + n)
    control.on_request(b"c0", {"op": "status", "args": {}})
    assert sent == [] and writes == [], "nothing answered nor written before the commit"
    control.commit()
    assert len(writes) == 1
    assert [identity for identity, _ in sent] == [b"c%d" % (n % 3) for n in range(50)] + [b"c0"]
    bodies = [reply["body"] for _, reply in sent]
    assert [b["tick"] for b in bodies[:50]] == [now + 60 + n for n in range(50)]
    assert bodies[50] == {"jobs": 0}
    saved = ledger.pushes()  # what a restart reads back: every acknowledged push
    assert set(saved) == {b["job"] for b in bodies[:50]} == set(control.plan.pushed)
    ledger.env.close()


def test_a_flood_commits_every_max_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    control, sent, ledger = requests(tmp_path)
    writes = count_writes(ledger, monkeypatch)
    for _ in range(MAX_BATCH * 2 + 1):
        push(control, b"c", control.clock.now() + 60)
    assert len(writes) == 2 and len(sent) == MAX_BATCH * 2
    control.commit()
    assert len(writes) == 3 and len(sent) == MAX_BATCH * 2 + 1
    assert len(ledger.pushes()) == MAX_BATCH * 2 + 1
    ledger.env.close()


def test_a_full_ledger_refuses_the_turns_pushes_and_answers_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control, sent, ledger = requests(tmp_path)

    def full(pushes: dict) -> None:
        raise LedgerFull("the ledger is full (8192 MiB)")

    monkeypatch.setattr(ledger, "save_pushes", full)
    for _ in range(3):
        push(control, b"c", control.clock.now() + 60)
    control.on_request(b"c", {"op": "status", "args": {}})
    control.commit()
    replies = [reply for _, reply in sent]
    assert [r["ok"] for r in replies] == [False, False, False, True]
    assert all(r["error"] == "push: the ledger is full (8192 MiB)" for r in replies[:3])
    assert control.plan.pushed == {} and control.unsaved == {}
    ledger.env.close()


def test_a_refused_push_is_answered_in_its_place(tmp_path: Path) -> None:
    control, sent, ledger = requests(tmp_path)
    now = control.clock.now()
    push(control, b"c", now + 60)
    push(control, b"c", float("nan"))
    push(control, b"c", now + 61)
    control.commit()
    assert [r["ok"] for _, r in sent] == [True, False, True]
    assert "at must be a time" in sent[1][1]["error"]
    assert len(ledger.pushes()) == 2
    ledger.env.close()
