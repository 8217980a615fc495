import errno
import marshal
import os
import signal
from pathlib import Path

import pytest

from zcron import spawner_process
from zcron import spool as spool_module
from zcron.process import Tail
from zcron.protocol import record
from zcron.spool import RESEND_AFTER_S, Spool, pending_on_disk


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


def test_a_torn_tail_keeps_the_records_before_it(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    for n in range(3):
        spool.add(record(run_id=f"r{n}", job="j", tick=float(n), status="ok"))
    (segment,) = tmp_path.glob("*.rec")
    segment.write_bytes(segment.read_bytes()[:-5])  # the crash cut the last record short
    again = Spool(str(tmp_path))
    assert sorted(again.pending) == ["r0", "r1"]
    assert len(list(tmp_path.glob("*.bad"))) == 1
    assert sorted(Spool(str(tmp_path)).pending) == ["r0", "r1"]  # moved to a sound segment


def test_a_segment_is_deleted_once_all_its_records_are_acked(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    for n in range(spool_module.SEGMENT_RECORDS + 1):
        spool.add(record(run_id=f"r{n}", job="j", tick=float(n), status="ok"))
    assert len(list(tmp_path.glob("*.rec"))) == 2
    spool.ack([f"r{n}" for n in range(spool_module.SEGMENT_RECORDS)])
    assert len(list(tmp_path.glob("*.rec"))) == 1
    spool.ack([f"r{spool_module.SEGMENT_RECORDS}"])
    assert list(tmp_path.glob("*.rec")) == [] and len(spool) == 0


def test_a_full_disk_keeps_the_record_in_memory_and_no_half_record_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(str(tmp_path))
    spool.add(record(run_id="r1", job="j", tick=1.0, status="ok"))
    real_write = os.write

    def write_half_then_fail(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "write", write_half_then_fail)
    spool.add(record(run_id="r2", job="j", tick=2.0, status="ok"))
    monkeypatch.undo()
    assert sorted(spool.pending) == ["r1", "r2"] and spool.write_errors == 1
    spool.add(record(run_id="r3", job="j", tick=3.0, status="ok"))
    assert sorted(Spool(str(tmp_path)).pending) == ["r1", "r3"]
    assert list(tmp_path.glob("*.bad")) == []


def test_tail_keeps_only_the_last_bytes() -> None:
    tail = Tail(limit=8)
    for _ in range(1000):
        tail.feed(b"0123456789")
    assert tail.text() == "23456789"
    assert len(tail.buffer) <= 16


def _skeleton(run_id: str) -> dict:
    return record(run_id=run_id, job="j", tick=100.0, status="lost", worker="w1",
                  scheduler="a", dispatched=99.5)  # fmt: skip


def test_the_spawners_ledger_reports_only_runs_that_ended_on_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = Spool(str(tmp_path), owner="w1").reports_prefix
    monkeypatch.setenv(spawner_process.REPORTS_ENV, prefix)
    ledger = spawner_process.Ledger()
    for n, pid in enumerate((11, 12, 13, 14), 1):
        ledger.requested[n] = _skeleton(f"r{pid}")
        ledger.note([{"id": n, "pid": pid, "at": 99.6}])
    ledger.note([{"pid": 11, "status": 0}])  # told the worker just before it died
    exited = {12: 3 << 8, 13: signal.SIGTERM, 14: spawner_process.UNRELEASED << 8}
    ledger.report(exited)  # 12 failed on its own; 13 we TERMed; 14 never released
    (report,) = tmp_path.glob("orphans-*.rep")
    records = {r["run_id"]: r for r in marshal.loads(report.read_bytes())}
    assert sorted(records) == ["r11", "r12"]
    assert (records["r11"]["status"], records["r12"]["status"]) == ("ok", "failed")
    assert records["r12"]["exit_code"] == 3 and records["r12"]["started"] == 100.0
    assert not Spool(str(tmp_path), owner="w2").pending  # another worker of the directory
    spool = Spool(str(tmp_path), owner="w1")  # the restarted worker takes them, once
    assert sorted(spool.pending) == ["r11", "r12"] and not list(tmp_path.glob("*.rep"))


def test_workers_sharing_a_spool_directory_take_only_their_own_files(tmp_path: Path) -> None:
    """The lock is per worker id, so two workers may share a directory: a restarted one
    takes its own segments and its spawner's reports, never the other's (it would send
    them under its key, and the sink refuse them for good: 7 records spooled forever)."""
    Spool(str(tmp_path)).add(_skeleton("r0"))  # a segment named before names carried ids
    w1 = Spool(str(tmp_path), owner="w1")  # takes the unnamed one: nobody else can tell
    w1.add(_skeleton("r1"))
    w1.add(_skeleton("r2"))
    w2 = Spool(str(tmp_path), owner="w2")
    assert w2.pending == {}
    assert sorted(w1.pending) == ["r0", "r1", "r2"] and pending_on_disk(tmp_path) == 3
    again = Spool(str(tmp_path), owner="w1")  # w1 restarted: its own records, still there
    assert sorted(again.pending) == ["r0", "r1", "r2"]


def test_a_spawner_report_that_is_not_records_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "orphans-1-a.rep").write_bytes(marshal.dumps([{"run_id": 7}]))
    (tmp_path / "orphans-1-b.rep").write_bytes(b"\x00garbage")
    spool = Spool(str(tmp_path))
    assert spool.pending == {} and len(list(tmp_path.glob("*.bad"))) == 2
