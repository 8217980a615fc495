from zcron.slots import WorkerTable


def ready(worker: str, free: int, seen: int, pools: tuple[str, ...] = ("default",)) -> dict:
    return {
        "worker": worker,
        "pools": list(pools),
        "slots": 2,
        "free": free,
        "seen": seen,
        "running": [],
    }


def job(run_id: str) -> dict:
    return {"run_id": run_id, "job": "j", "pool": "default"}


def test_jobs_go_to_the_worker_with_most_free_slots() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"w1", ready("w1", 1, 0), now=0.0)
    table.announce(b"w2", ready("w2", 2, 0), now=0.0)
    assert table.pick("default").id == "w2"


def test_in_flight_jobs_use_up_announced_credit() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"w1", ready("w1", 1, 0), now=0.0)
    table.pick("default").assign(job("r1"))
    assert table.pick("default") is None
    table.announce(b"w1", ready("w1", 1, 0), now=0.1)  # an announcement sent before r1 arrived
    assert table.pick("default") is None
    table.announce(b"w1", ready("w1", 0, 1), now=0.2)
    assert table.workers[b"w1"].running.keys() == {"r1"}
    table.finished(b"w1", "r1")
    table.announce(b"w1", ready("w1", 1, 1), now=0.3)
    assert table.pick("default").id == "w1"


def test_pools_are_respected_and_another_worker_is_preferred() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"w1", ready("w1", 1, 0, ("db",)), now=0.0)
    table.announce(b"w2", ready("w2", 1, 0), now=0.0)
    table.announce(b"w3", ready("w3", 2, 0), now=0.0)
    assert table.pick("db").id == "w1"
    assert table.pick("default", avoid="w3").id == "w2"
    assert table.pick("none") is None


def test_a_restarted_worker_returns_its_runs_as_lost() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"w1", ready("w1", 2, 0), now=0.0)
    table.pick("default").assign(job("r1"))
    table.announce(b"w1", ready("w1", 1, 1), now=0.1)
    table.pick("default").assign(job("r2"))
    lost = table.announce(b"w1", ready("w1", 2, 0), now=0.2)
    assert sorted(j["run_id"] for j in lost) == ["r1", "r2"]
    assert table.pick("default").credit == 2


def test_silent_workers_expire() -> None:
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"w1", ready("w1", 1, 0), now=0.0)
    assert table.expire(0.5) == []
    assert [w.id for w in table.expire(1.5)] == ["w1"]
    assert table.pick("default") is None


def test_a_started_run_is_no_longer_queued_nor_parked() -> None:
    """A worker that releases a queued run tells it in a `started` between two `ready`s:
    were it to die then, the run must not count as never started (dispatched again)."""
    table = WorkerTable(timeout_s=1.0)
    table.announce(b"w1", {**ready("w1", 0, 0), "queued": ["q1", "q2"], "parked": ["p1", "q1"]},
                   now=0.0)  # fmt: skip
    table.started(b"w1", ["q1", "p1"])
    worker = table.workers[b"w1"]
    assert worker.queued == {"q2"} and worker.parked == set()
    table.started(b"w9", ["q2"])  # a worker we do not know: nothing to change
    assert worker.queued == {"q2"}
