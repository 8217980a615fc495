"""The worker's prefetch queue, driven by hand (real spawners and processes, no scheduler):
slots limit running commands, a freed slot starts the next queued job at once."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.harness import wait_until
from zcron.config import Config, WorkerConfig
from zcron.protocol import decode
from zcron.worker import ANSWERS_WAIT_S, Worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    config = Config(worker=WorkerConfig(id="w9", slots=1, prefetch=3, spool=str(tmp_path / "s")))
    worker = Worker(config)
    worker.sink = worker.ctx.socket(zmq.DEALER)  # connected nowhere: results stay spooled
    worker.announce = lambda **_: None  # type: ignore[method-assign]  # no scheduler to tell
    yield worker
    for run in list(worker.runs.by_id.values()):
        run.signal_group(9)
    worker.sink.close(linger=0)
    worker.run_fds.close()
    for spawner in worker.spawners.values():
        spawner.close()


def job(run_id: str, command: str, name: str | None = None, tick: float | None = None) -> dict:
    now = time.time()
    return {
        "run_id": run_id, "job": name or run_id, "tick": now if tick is None else tick,
        "attempt": 1, "scheduler": "a", "pool": "default", "command": command,
        "shell": "/bin/sh", "user": None, "env": {}, "cwd": None, "timeout": None,
        "on_timeout": "kill", "dispatched": now,
    }  # fmt: skip


def turn(worker: Worker) -> None:
    """One turn of the worker's loop as step() runs it, without its sockets."""
    worker.handle_ready(dict(worker.poller.poll(10)))
    worker.supersede_due(time.time())
    worker.release_due_runs()
    worker.arm_received()


def test_one_slot_runs_the_queue_one_by_one_with_no_scheduler(worker: Worker) -> None:
    for n in range(4):
        worker.queue(job(f"r{n}", "sleep 0.2"))
    running, armed, deadline = 0, 0, time.monotonic() + 20
    while len(worker.spool.pending) < 4:
        assert time.monotonic() < deadline, worker.spool.pending
        turn(worker)
        running = max(running, len(worker.runs.started))
        armed = max(armed, len(worker.runs.by_id))
    recs = sorted(worker.spool.pending.values(), key=lambda r: r["started"])
    # one runs, the rest of the queue waits armed (their shells parked)
    assert (running, armed) == (1, 4) and [r["status"] for r in recs] == ["ok"] * 4
    for before, after in zip(recs, recs[1:], strict=False):
        # the next starts when the slot frees: after the previous end, well within a round
        # trip's worth of a loaded machine (it needs none: nobody else is asked)
        assert 0 <= after["started"] - before["finished"] < 0.25, (before, after)


def test_a_recall_returns_a_queued_job_and_not_a_started_one(worker: Worker) -> None:
    worker.queue(job("run", "sleep 5"))
    worker.queue(job("wait", "true"))
    wait_until(lambda: turn(worker) or worker.runs.started == {"run"}, 10, "the first to run")
    wait_until(lambda: turn(worker) or worker.runs.held, 10, "the second held, armed")
    returned: list[str] = []
    worker.recall("a", "run", returned)
    worker.recall("b", "wait", returned)  # another scheduler's recall: not its run
    assert returned == [] and worker.runs.waiting() == ["wait"]
    worker.recall("a", "wait", returned)
    assert returned == ["wait"] and worker.runs.waiting() == []
    # its parked shell exits unreleased, and nothing is recorded of it here
    wait_until(lambda: turn(worker) or "wait" not in worker.runs.by_id, 10, "its shell's end")
    assert "wait" not in worker.spool.pending and worker.runs.started == {"run"}


def test_a_newer_tick_of_a_job_replaces_its_queued_one_recorded_missed(worker: Worker) -> None:
    worker.queue(job("run", "sleep 5"))
    worker.queue(job("old", "true", name="j", tick=100.0))
    worker.queue(job("new", "true", name="j", tick=101.0))
    assert [m["run_id"] for m in worker.runs.received] == ["run", "new"]
    rec = worker.spool.pending["old"]
    assert (rec["status"], rec["worker"]) == ("missed", "w9")
    assert "came before a slot did" in rec["stderr_tail"]
    # armed ahead and held (its shell parked) counts as waiting too: one tick per job
    wait_until(lambda: turn(worker) or worker.runs.held, 10, "'new' armed and held")
    worker.queue(job("newer", "true", name="j", tick=102.0))
    assert worker.spool.pending["new"]["status"] == "missed"
    assert worker.runs.waiting() == ["newer"]
    wait_until(lambda: turn(worker) or "new" not in worker.runs.by_id, 10, "its shell's end")
    assert worker.spool.pending["new"]["status"] == "missed"  # its unreleased end: no record


def test_a_newer_tick_dispatched_ahead_replaces_the_queued_one_only_at_its_instant(
    worker: Worker,
) -> None:
    """Spec §8.13 with the dispatch lead: the newer tick arrives before its instant, and the
    older one keeps its chance of a slot until then (coalesce.py)."""
    now = time.time()
    worker.queue(job("run", "sleep 0.3"))
    worker.queue(job("old", "true", name="j", tick=now - 0.5))
    worker.queue(job("new", "true", name="j", tick=now + 60))  # due in a minute
    assert [m["run_id"] for m in worker.runs.received] == ["run", "old", "new"]
    wait_until(lambda: turn(worker) or "old" in worker.spool.pending, 10, "old's run")
    assert worker.spool.pending["old"]["status"] == "ok"  # it got the slot that freed

    worker.queue(job("run2", "sleep 5", tick=time.time() - 1))  # first in tick order
    worker.queue(job("old2", "true", name="k", tick=time.time() - 0.5))
    worker.queue(job("new2", "true", name="k", tick=time.time() + 0.4))
    wait_until(lambda: turn(worker) or "old2" in worker.spool.pending, 10, "new2's instant")
    rec = worker.spool.pending["old2"]
    assert rec["status"] == "missed" and "came before a slot did" in rec["stderr_tail"]
    assert time.time() >= worker.spool.pending["old2"]["tick"] + 0.9  # at new2's instant
    assert "new2" in worker.runs.waiting()


def test_a_slot_frees_when_its_process_exits_before_the_spawners_news(worker: Worker) -> None:
    """The run's pidfd (passed by the spawner with the pid) says the process exited: the
    slot is free and the next queued run starts, and the record's `finished` is that
    instant, not the later arrival of the exit status."""
    worker.queue(job("first", "sleep 0.3"))  # long enough for its pidfd to come first
    worker.queue(job("second", "true"))
    wait_until(lambda: turn(worker) or worker.runs.started == {"first"}, 10, "first released")
    run = worker.runs.by_id["first"]
    wait_until(lambda: turn(worker) or run.pidfd is not None, 10, "its pidfd")
    wait_until(lambda: turn(worker) or run.exited_at is not None, 10, "its exit, seen")
    wait_until(lambda: len(worker.spool.pending) == 2 or turn(worker), 10, "both ended")
    first, second = worker.spool.pending["first"], worker.spool.pending["second"]
    assert run.exited_at is not None and first["finished"] == max(run.exited_at, first["started"])
    assert first["finished"] <= second["started"]  # one slot: never two at once
    assert not worker.runs.by_pidfd and not worker.runs.by_id  # every pidfd closed


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[Worker, zmq.Socket]]:
    """A worker with 2 slots whose scheduler "a" is a ROUTER of the test's (inproc)."""
    config = Config(worker=WorkerConfig(id="w8", slots=2, spool=str(tmp_path / "s")))
    worker = Worker(config)
    ctx = worker.ctx
    worker.sink = ctx.socket(zmq.DEALER)  # connected nowhere: results stay spooled
    scheduler = ctx.socket(zmq.ROUTER)
    scheduler.bind(f"inproc://prefetch-{id(worker)}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"inproc://prefetch-{id(worker)}")
    worker.schedulers, worker.seen = {dealer: "a"}, {"a": 0}
    yield worker, scheduler
    for run in list(worker.runs.by_id.values()):
        run.signal_group(9)
    for sock in (dealer, scheduler, worker.sink):
        sock.close(linger=0)
    worker.run_fds.close()
    for spawner in worker.spawners.values():
        spawner.close()


def received(scheduler: zmq.Socket) -> list[tuple[str, dict]]:
    out = []
    while scheduler.poll(0):
        out.append(decode(scheduler.recv_multipart()[1]))
    return out


def test_a_turn_sends_one_ready_per_scheduler_carrying_its_ended_runs_and_ticks(
    wired: tuple[Worker, zmq.Socket],
) -> None:
    """No `finished` or `accepted` apart: each turn's `ready` carries them (batching)."""
    worker, scheduler = wired
    for n in range(6):
        worker.queue(job(f"r{n}", "true"))
        worker.accepted.append([f"r{n}", 1.0])
    kinds: list[str] = []
    ended: list[str] = []
    ticks: list[list] = []
    deadline = time.monotonic() + 20
    while len(ended) < 6:
        assert time.monotonic() < deadline, (kinds, ended)
        turn(worker)
        worker.announce_if_freed()
        for kind, msg in received(scheduler):
            kinds.append(kind)
            ended += [entry[0] for entry in msg.get("ended", [])]
            ticks += msg.get("ticks", [])
    assert set(kinds) <= {"ready", "started"}, kinds  # `started`: runs released from the queue
    assert sorted(ended) == [f"r{n}" for n in range(6)] and len(ticks) == 6
    assert kinds.count("ready") < 12  # at most one per turn that freed something, not two per run


def test_a_queued_run_that_starts_is_no_longer_queued_to_its_scheduler_that_turn(
    wired: tuple[Worker, zmq.Socket],
) -> None:
    """A run released from the queue into a freed slot was `queued` in the last `ready`:
    were the worker to die before telling, a scheduler would dispatch it again (it never
    started, as far as it knows). The turn that releases it tells it: a `started` of its
    id, not a whole `ready`, unless the turn sends one anyway."""
    worker, scheduler = wired
    for n in range(5):
        worker.queue(job(f"q{n}", "sleep 0.05"))
    view: set[str] = set()  # the scheduler's idea of the queue (slots.WorkerSlots)
    kinds: list[str] = []
    deadline = time.monotonic() + 20
    while len(worker.spool.pending) < 5:
        assert time.monotonic() < deadline, (kinds, worker.spool.pending)
        turn(worker)
        worker.announce_if_freed()
        for kind, msg in received(scheduler):
            kinds.append(kind)
            if kind == "ready":
                view = set(msg.get("queued", ()))
            elif kind == "started":
                view -= set(msg["run_ids"])
        started_here = worker.runs.started | set(worker.spool.pending)
        assert not view & started_here, (view, started_here, kinds)
    assert "started" in kinds, kinds  # 3 runs left the queue on an exit's pidfd


def test_the_spawners_answers_wait_while_runs_are_queued(worker: Worker) -> None:
    """While runs wait for a slot, the exit statuses (records) wait unread for up to
    ANSWERS_WAIT_S; the slot still frees at the exit (pidfd), the runs still go one at a
    time, and every record comes."""
    for n in range(6):
        worker.queue(job(f"w{n}", "sleep 0.01"))
    spawners = [s.fileno() for s in worker.spawners.values()]
    unread_since, longest = None, 0.0  # an answer waiting unread while runs are queued
    deadline = time.monotonic() + 20
    while len(worker.spool.pending) < 6:
        assert time.monotonic() < deadline, worker.spool.pending
        worker.step()
        now = time.monotonic()
        if worker.answers_wait_until is not None and select.select(spawners, [], [], 0)[0]:
            unread_since = unread_since or now
            longest = max(longest, now - unread_since)
        else:
            unread_since = None
    assert longest >= ANSWERS_WAIT_S / 3, longest
    records = sorted(worker.spool.pending.values(), key=lambda r: r["started"])
    assert all(r["status"] == "ok" for r in records), records
    for before, after in zip(records, records[1:], strict=False):
        assert before["finished"] <= after["started"]  # one slot
