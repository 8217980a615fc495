from pathlib import Path

from zcron.process import Tail
from zcron.protocol import record
from zcron.spool import RESEND_AFTER_S, Spool


def test_spooled_records_survive_a_restart_until_acked(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.add(record(run_id="r1", job="j", tick=1.0, status="ok"))
    spool.add(record(run_id="r/2", job="j", tick=2.0, status="ok"))
    again = Spool(str(tmp_path))
    assert sorted(again.pending) == ["r/2", "r1"]
    again.ack(["r1"])
    assert sorted(Spool(str(tmp_path)).pending) == ["r/2"]


def test_unacked_records_are_resent_after_a_while(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.add(record(run_id="r1", job="j", tick=1.0, status="ok"))
    spool.mark_sent("r1", 100.0)
    assert spool.due(100.0 + RESEND_AFTER_S / 2) == []
    assert [r["run_id"] for r in spool.due(100.0 + RESEND_AFTER_S)] == ["r1"]


def test_a_torn_spool_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "bad.rec").write_bytes(b"\x85\xa1")
    assert len(Spool(str(tmp_path))) == 0
    assert (tmp_path / "bad.bad").exists()


def test_tail_keeps_only_the_last_bytes() -> None:
    tail = Tail(limit=8)
    for _ in range(1000):
        tail.feed(b"0123456789")
    assert tail.text() == "23456789"
    assert len(tail.buffer) <= 16
