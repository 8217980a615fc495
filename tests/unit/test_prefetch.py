"""Prefetch credit: free slots first, queues only when no slot is free, recalls, capacity."""

from collections import deque

import pytest

from zcron.errors import ProtocolError
from zcron.prefetch import (
    RECALL_AGAIN_S,
    Recalls,
    capacity,
    park_ahead,
    prefetch_of,
    take_all,
)
from zcron.protocol import decode, encode
from zcron.slots import WorkerTable


def ready(worker: str, free: int, seen: int, room: int = 0, queued: tuple[str, ...] = (),
          running: tuple[str, ...] = ()) -> dict:  # fmt: skip
    return {"worker": worker, "pools": ["default"], "slots": 2, "free": free, "seen": seen,
            "running": list(running), "room": room, "queued": list(queued)}  # fmt: skip


def job(run_id: str, tick: float = 100.0, name: str = "j") -> dict:
    return {"run_id": run_id, "job": name, "pool": "default", "tick": tick, "scheduler": "a"}


def test_capacity_counts_queued_jobs_against_slots_then_the_queue() -> None:
    assert capacity(slots=2, prefetch=32, running=0, queued=0) == (2, 32)
    assert capacity(slots=2, prefetch=32, running=1, queued=0) == (1, 32)
    assert capacity(slots=2, prefetch=32, running=2, queued=5) == (0, 27)
    assert capacity(slots=2, prefetch=32, running=1, queued=1) == (0, 32)  # armed next turn
    assert capacity(slots=2, prefetch=32, running=2, queued=32) == (0, 0)
    assert capacity(slots=2, prefetch=0, running=2, queued=0) == (0, 0)
    assert prefetch_of(None, 2) == 100 and prefetch_of(None, 200) == 200 and prefetch_of(0, 4) == 0


def test_the_whole_queue_is_parked_ahead_within_the_open_files() -> None:
    assert park_ahead(prefetch=32, slots=2, runs_room=1 << 20) == 32
    assert park_ahead(prefetch=1, slots=4, runs_room=1 << 20) == 1
    assert park_ahead(prefetch=0, slots=4, runs_room=1 << 20) == 0
    assert park_ahead(prefetch=100, slots=100, runs_room=150) == 50  # 150 runs' fds fit
    assert park_ahead(prefetch=100, slots=100, runs_room=90) == 0


def test_a_free_slot_anywhere_wins_over_a_queue_with_more_room() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"busy", ready("busy", 0, 0, room=32), now=0.0)
    table.announce(b"idle", ready("idle", 1, 0, room=2), now=0.0)
    first = table.pick("default")
    assert first is not None and first.id == "idle"
    first.assign(job("r1"))
    # idle's one slot is now promised to r1: the next job goes to the roomiest queue
    second = table.pick("default")
    assert second is not None and second.id == "busy"


def test_queue_credit_is_exact_and_a_worker_without_prefetch_gets_none_beyond_its_slots() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"w1", ready("w1", 1, 0, room=2), now=0.0)
    table.announce(b"old", ready("old", 0, 0), now=0.0)  # no prefetch (an older worker)
    for n in range(3):
        worker = table.pick("default")
        assert worker is not None and worker.id == "w1"
        worker.assign(job(f"r{n}"))
    assert table.pick("default") is None  # 1 free + 2 room, all three in flight
    table.announce(b"w1", ready("w1", 0, 3, room=0, queued=("r1", "r2")), now=0.1)
    assert table.pick("default") is None
    assert table.workers[b"w1"].queued == {"r1", "r2"}


def test_a_freed_worker_recalls_the_oldest_queued_runs_up_to_its_free_slots() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"busy", ready("busy", 0, 0, room=32), now=0.0)
    busy = table.workers[b"busy"]
    for run_id, tick in (("late", 102.0), ("early", 101.0), ("mid", 101.5)):
        busy.assign(job(run_id, tick))
    table.announce(b"busy", ready("busy", 0, 3, room=29, queued=("late", "early", "mid")),
                   now=0.1)  # fmt: skip
    recalls = Recalls()
    assert recalls.due(table.workers.values(), now=0.1) == []  # nobody has a free slot
    table.announce(b"idle", ready("idle", 2, 0), now=0.2)
    chosen = recalls.due(table.workers.values(), now=0.2)
    assert [(w.id, r) for w, r in chosen] == [("busy", "early"), ("busy", "mid")]
    # recalls in flight hold those two free slots: nothing more, not the same again
    assert recalls.due(table.workers.values(), now=0.3) == []
    recalls.answered("early")
    table.finished(b"busy", "early")
    again = recalls.due(table.workers.values(), now=0.4)
    assert [r for _, r in again] == ["late"]


def one_queued(busy_free: int) -> WorkerTable:
    """r1 queued at `busy` (announcing `busy_free` free slots), and `idle` with one free."""
    table = WorkerTable(timeout_s=10.0)
    table.announce(b"busy", ready("busy", 0, 0, room=32), now=0.0)
    table.workers[b"busy"].assign(job("r1"))
    table.announce(b"busy", ready("busy", busy_free, 1, room=31, queued=("r1",)), now=0.0)
    table.announce(b"idle", ready("idle", 1, 0), now=0.0)
    return table


def test_an_unanswered_recall_is_sent_again_after_a_while() -> None:
    table = one_queued(busy_free=0)
    recalls = Recalls()
    assert [r for _, r in recalls.due(table.workers.values(), now=1.0)] == ["r1"]
    assert recalls.due(table.workers.values(), now=1.0 + RECALL_AGAIN_S / 2) == []
    assert [r for _, r in recalls.due(table.workers.values(), now=1.0 + RECALL_AGAIN_S)] == ["r1"]


def test_a_worker_with_a_free_slot_keeps_its_own_queue() -> None:
    """Queued at a worker that has a free slot: it arms them itself (spawners were full)."""
    table = one_queued(busy_free=1)
    assert Recalls().due(table.workers.values(), now=0.0) == []


def test_a_drain_returns_the_queue_by_scheduler() -> None:
    queue = deque([job("a1", 100.0, "a"), job("b1", 100.0, "b")])
    queue.append({**job("x", 1.0), "scheduler": "b"})
    assert take_all(queue) == {"a": ["a1", "b1"], "b": ["x"]} and not queue


def test_recall_returned_and_the_ready_fields_are_validated() -> None:
    assert decode(encode("recall", run_id="r1")) == ("recall", {"run_id": "r1"})
    assert decode(encode("returned", run_ids=["r1"]))[1] == {"run_ids": ["r1"]}
    assert decode(encode("started", worker="w1", run_ids=["r1"]))[1]["run_ids"] == ["r1"]
    base = ready("w1", 1, 0, room=3, queued=("r1",))
    assert decode(encode("ready", **base))[1]["room"] == 3
    end = ["r1", "j", "ok", 100.0, 1, 0, 100.5]
    batched = {**base, "ended": [end], "ticks": [["j", 100.0]], "runs": [["j", 100.0, 1]]}
    assert decode(encode("ready", **batched))[1]["ended"] == [end]
    bad = [encode("returned", run_ids=[1]), encode("returned", run_ids=[""]),
           encode("started", worker="w1", run_ids=[1]), encode("started", worker="w1"),
           encode("started", worker="w1", run_ids=["r" * 300]),
           encode("started", worker="w1", run_ids=["r1"] * 4097),
           encode("ready", **{**base, "room": -1}), encode("ready", **{**base, "queued": [3]}),
           encode("ready", **{**base, "room": float("nan")}),
           encode("ready", **{**base, "ended": [["r1", "j", "bogus", *end[3:]]]}),
           encode("ready", **{**base, "ended": [["", *end[1:]]]}),
           encode("ready", **{**base, "ended": [["r1", "j", "ok"]]}),
           encode("ready", **{**base, "ended": [[*end[:3], float("nan"), *end[4:]]]}),
           encode("ready", **{**base, "ended": [[*end[:4], 0, *end[5:]]]}),
           encode("ready", **{**base, "ended": [[*end[:5], 1.5, end[6]]]}),
           encode("ready", **{**base, "ended": [[*end[:6], float("inf")]]}),
           encode("ready", **{**base, "runs": [["j", 100.0, True]]}),
           encode("ready", **{**base, "ticks": [["j", float("inf")]]}),
           encode("ready", **{**base, "ended": [end] * 4097})]  # fmt: skip
    for frame in bad:
        with pytest.raises(ProtocolError):
            decode(frame)
