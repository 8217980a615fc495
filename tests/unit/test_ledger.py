"""ledger.TickLedger: the newest fired tick per job, persisted; a full map grows, bounded."""

from __future__ import annotations

import time
from pathlib import Path

from zcron.ledger import TickLedger

T0 = 1_700_000_000.0


def test_older_news_changes_nothing(tmp_path: Path) -> None:
    ledger = TickLedger(str(tmp_path / "ledger"))
    ledger.note("j", T0 + 5)
    ledger.note("j", T0)
    assert ledger.last("j") == T0 + 5
    assert ledger.has_fired("j", T0 + 5) and not ledger.has_fired("j", T0 + 6)
    ledger.close()


def test_a_full_ledger_map_grows_and_the_flush_succeeds(tmp_path: Path) -> None:
    ledger = TickLedger(str(tmp_path / "ledger"))
    ledger.env.set_mapsize(64 << 10)  # a few pages: the names below do not fit
    for i in range(2000):
        ledger.note(f"job-{i:05d}-{'x' * 40}", T0 + i)
    ledger.flush()
    assert ledger.dirty == set() and ledger.env.info()["map_size"] > 64 << 10
    ledger.close()
    assert TickLedger(str(tmp_path / "ledger")).last("job-01999-" + "x" * 40) == T0 + 1999


def test_claims_handed_to_the_writer_thread_are_on_disk_for_the_next_start(
    tmp_path: Path,
) -> None:
    """flush_async commits off the loop; what it wrote is read back by a new ledger (the
    restart), and a newer tick of a job handed over twice wins."""
    ledger = TickLedger(str(tmp_path / "ledger"))
    ledger.note("a", T0)
    ledger.flush_async()
    ledger.note("a", T0 + 1)
    ledger.note("b", T0 + 2)
    ledger.flush_async()
    assert ledger.dirty == set()
    assert wait_for_row(ledger, b"b") == repr(T0 + 2).encode()  # committed while open
    ledger.close()
    again = TickLedger(str(tmp_path / "ledger"))
    assert (again.last("a"), again.last("b")) == (T0 + 1, T0 + 2)
    again.close()


def wait_for_row(ledger: TickLedger, key: bytes) -> bytes | None:
    """The row once the writer's transaction has committed (a new read txn each try)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with ledger.env.begin(db=ledger.db) as fresh:
            value = fresh.get(key)
        if value is not None:
            return value
        time.sleep(0.01)
    return None


def test_rows_that_do_not_fit_go_back_to_the_loop_which_grows_the_map(tmp_path: Path) -> None:
    ledger = TickLedger(str(tmp_path / "ledger"))
    ledger.env.set_mapsize(64 << 10)
    for i in range(2000):
        ledger.note(f"job-{i:05d}-{'x' * 40}", T0 + i)
    ledger.flush_async()
    deadline = time.monotonic() + 10
    while not ledger.writer.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    ledger.flush_if_due(now_mono=1e9)  # the loop's turn: takes them back and writes them
    assert ledger.dirty == set() and ledger.env.info()["map_size"] > 64 << 10
    ledger.close()
    assert TickLedger(str(tmp_path / "ledger")).last("job-01999-" + "x" * 40) == T0 + 1999
