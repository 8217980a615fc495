"""ledger.TickLedger: the newest fired tick per job, persisted; a full map grows, bounded."""

from __future__ import annotations

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
