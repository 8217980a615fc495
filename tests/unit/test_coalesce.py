"""Bounded overload's rule (spec §8.13, zcron/coalesce.py), on a fake clock: a job keeps at
most one due tick waiting, and an older one is dropped when the newer one's instant comes,
not when the newer one arrives ahead of it (the dispatch lead)."""

from __future__ import annotations

from zcron.coalesce import Coalescer


def make(waiting: set[str]) -> Coalescer[str]:
    return Coalescer(lambda item: item in waiting)


def test_a_newer_tick_already_due_drops_the_older_at_once() -> None:
    waiting = {"t100"}
    coalesce = make(waiting)
    assert coalesce.add("job", "t100", 100.0, 100.0, now=100.2) == []
    waiting.add("t101")
    assert coalesce.add("job", "t101", 101.0, 101.0, now=101.1) == [("t100", 101.0)]
    assert coalesce.next_deadline() is None


def test_a_newer_tick_dispatched_ahead_drops_the_older_only_at_its_instant() -> None:
    waiting = {"t100", "t101"}
    coalesce = make(waiting)
    coalesce.add("job", "t100", 100.0, 100.0, now=100.0)
    # t101 arrives half a second ahead: t100 may still get a slot meanwhile
    assert coalesce.add("job", "t101", 101.0, 101.0, now=100.5) == []
    assert coalesce.next_deadline() == 101.0
    assert coalesce.due(now=100.99) == []
    assert coalesce.due(now=101.0) == [("t100", 101.0)]
    assert coalesce.due(now=102.0) == [] and coalesce.next_deadline() is None


def test_an_older_tick_that_started_before_the_instant_is_not_dropped() -> None:
    waiting = {"t100", "t101"}
    coalesce = make(waiting)
    coalesce.add("job", "t100", 100.0, 100.0, now=100.0)
    coalesce.add("job", "t101", 101.0, 101.0, now=100.5)
    waiting.discard("t100")  # a slot freed at 100.7: it ran
    assert coalesce.due(now=101.0) == []


def test_the_instant_includes_a_delay_and_jobs_are_apart() -> None:
    waiting = {"a1", "a2", "b1"}
    coalesce = make(waiting)
    coalesce.add("a", "a1", 100.0, 100.0, now=100.0)
    coalesce.add("b", "b1", 100.0, 100.0, now=100.0)
    coalesce.add("a", "a2", 101.0, 101.3, now=100.6)  # jitter: due at 101.3
    assert coalesce.due(now=101.2) == []
    assert coalesce.due(now=101.3) == [("a1", 101.0)]
    assert "b1" in waiting and coalesce.newest == {"a": "a2", "b": "b1"}


def test_a_chain_of_ticks_drops_each_at_its_successor_and_forget_clears_the_newest() -> None:
    waiting = {"t1", "t2", "t3"}
    coalesce = make(waiting)
    coalesce.add("j", "t1", 1.0, 1.0, now=1.0)
    coalesce.add("j", "t2", 2.0, 2.0, now=1.5)
    assert coalesce.due(now=2.0) == [("t1", 2.0)]
    waiting.discard("t1")
    coalesce.add("j", "t3", 3.0, 3.0, now=2.5)
    assert coalesce.due(now=3.0) == [("t2", 3.0)]
    waiting.discard("t2")
    coalesce.forget("j", "t2")  # not the newest: nothing changes
    assert coalesce.newest == {"j": "t3"}
    coalesce.forget("j", "t3")
    assert coalesce.newest == {}
    # nothing newer was waiting: a new tick supersedes nobody
    assert coalesce.add("j", "t4", 4.0, 4.0, now=4.0) == []
