"""The LMDB run store: idempotent puts, newest-first queries, duplicates, growth, retention."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcron.protocol import record
from zcron.store import Store, key_time, name_key, time_key

T0 = 1_795_000_000.0
BATCH = 100
# Writes batch after batch of records and prints each batch's number once put_many returned
# (the sink acks at that point); the test SIGKILLs it while it is writing.
WRITER = """
import sys
from zcron.protocol import record
from zcron.store import Store
store = Store(sys.argv[1])
for b in range(1_000_000):
    store.put_many(
        record(run_id=f"b{b}-{k}", job=f"j{k % 7}", tick=1e9 + b, started=1e9 + b,
               finished=1e9 + b + k / 1000, status="ok", stdout_tail="x" * (k * 20))
        for k in range(int(sys.argv[2]))
    )
    print(b, flush=True)
"""


def run(n: int, job: str = "backup", status: str = "ok", **extra: object) -> dict:
    """A finished run of `job` at tick T0 + n."""
    values = dict(
        run_id=f"{job}-{n}",
        job=job,
        tick=T0 + n,
        scheduler="a",
        worker="w1",
        dispatched=T0 + n + 0.0004,
        started=T0 + n + 0.001,
        finished=T0 + n + 0.5,
        exit_code=0 if status == "ok" else 1,
        status=status,
    )
    values.update(extra)
    return record(**values)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(str(tmp_path / "sink"))
    yield s
    s.close()


def test_put_many_returns_only_new_records(store: Store) -> None:
    first = store.put_many([run(1), run(2)])
    again = store.put_many([run(2), run(3)])
    assert [r["run_id"] for r in first.new] == ["backup-1", "backup-2"]
    assert [r["run_id"] for r in again.new] == ["backup-3"]
    assert store.count() == 3


def test_same_run_id_twice_in_one_batch_is_stored_once(store: Store) -> None:
    stored = store.put_many([run(1), run(1, status="failed")])
    assert len(stored.new) == 1
    assert store.query()[0]["status"] == "ok"


def test_query_is_newest_first_and_round_trips_records(store: Store) -> None:
    records = [run(n) for n in (5, 1, 3, 2, 4)]
    store.put_many(records)
    found = store.query()
    assert [r["run_id"] for r in found] == [f"backup-{n}" for n in (5, 4, 3, 2, 1)]
    assert found[0] == run(5)


def test_query_files_unfinished_runs_by_started_then_tick(store: Store) -> None:
    store.put_many(
        [
            run(10, finished=None),
            run(20, finished=None, started=None, status="missed"),
            run(15),
        ]
    )
    assert [r["run_id"] for r in store.query()] == ["backup-20", "backup-15", "backup-10"]


def test_query_filters_by_job_status_and_time(store: Store) -> None:
    store.put_many([run(n, job="a", status="ok" if n % 2 else "failed") for n in range(10)])
    store.put_many([run(n, job="b") for n in range(10)])
    assert {r["job"] for r in store.query(job="a", limit=100)} == {"a"}
    assert len(store.query(job="a")) == 10
    assert [r["run_id"] for r in store.query(job="a", status="failed", limit=2)] == ["a-8", "a-6"]
    assert len(store.query(status=["failed", "ok"], limit=1000)) == 20
    window = store.query(job="b", since=T0 + 3, until=T0 + 6.5)
    assert [r["run_id"] for r in window] == ["b-5", "b-4", "b-3"]
    assert store.query(job="nobody") == []


def test_until_is_exclusive_so_pages_do_not_repeat(store: Store) -> None:
    store.put_many([run(n) for n in range(10)])
    page = store.query(limit=4)
    rest = store.query(until=page[-1]["finished"], limit=100)
    assert [r["run_id"] for r in page + rest] == [f"backup-{n}" for n in range(9, -1, -1)]


def test_limit_stops_the_walk(store: Store) -> None:
    store.put_many([run(n) for n in range(300)])
    assert [r["run_id"] for r in store.query(limit=3)] == ["backup-299", "backup-298", "backup-297"]


def test_job_names_that_prefix_each_other_stay_apart(store: Store) -> None:
    store.put_many([run(1, job="db"), run(2, job="db-backup")])
    assert [r["job"] for r in store.query(job="db")] == ["db"]


def test_long_names_are_stored_and_found(store: Store) -> None:
    job = "j" * 256
    store.put_many([run(1, job=job, run_id="r" * 256)])
    store.put_many([run(1, job=job, run_id="r" * 256)])
    assert [r["job"] for r in store.query(job=job)] == [job]
    assert store.count() == 1
    assert len(name_key("é" * 256)) == 21


def test_second_first_attempt_of_a_tick_is_a_duplicate_run(store: Store) -> None:
    store.put_many([run(1)])
    stored = store.put_many([run(1, run_id="other-scheduler", scheduler="b")])
    assert [r["run_id"] for r in stored.duplicates] == ["other-scheduler"]


def test_retries_and_skipped_ticks_are_not_duplicates(store: Store) -> None:
    store.put_many([run(1, status="failed")])
    retry = store.put_many([run(1, run_id="retry", attempt=2)])
    skipped = store.put_many([run(1, run_id="skip", status="skipped", started=None)])
    redelivered = store.put_many([run(1, status="failed")])
    assert retry.duplicates == skipped.duplicates == redelivered.duplicates == []


def test_a_second_run_of_one_attempt_is_a_duplicate_too(store: Store) -> None:
    store.put_many([run(1, status="failed"), run(1, run_id="retry", attempt=2)])
    again = store.put_many([run(1, run_id="retry-elsewhere", attempt=2, scheduler="b")])
    assert [r["run_id"] for r in again.duplicates] == ["retry-elsewhere"]


def test_the_workers_record_replaces_a_schedulers_lost_guess(store: Store) -> None:
    guess = run(1, status="lost", worker=None, started=None, finished=None)
    store.put_many([guess])
    truth = store.put_many([run(1)])  # the worker was paused, not dead: it ran the run
    assert [r["status"] for r in truth.superseded] == ["ok"] and truth.duplicates == []
    assert [(r["run_id"], r["status"]) for r in store.query()] == [("backup-1", "ok")]
    assert store.last_runs()["backup"]["last_success"] is not None
    late_guess = store.put_many([guess])  # a guess never replaces what the worker said
    assert late_guess.new == [] and store.query()[0]["status"] == "ok"
    assert store.count() == 1


def test_a_lost_guess_beside_the_ticks_real_run_is_no_duplicate(store: Store) -> None:
    """A cut-off scheduler records `lost` for its dispatch that never reached a worker,
    while a peer's run of the same tick ran: two records, one run, no duplicate (in either
    order). If the guessed run did run, its worker's record replaces the guess and counts."""
    guess = {**run(1, status="lost", worker=None, started=None, finished=None),
             "run_id": "b-dispatch", "scheduler": "b"}  # fmt: skip
    assert store.put_many([guess]).duplicates == []
    assert store.put_many([run(1)]).duplicates == []
    later = {**guess, "run_id": "b-dispatch-2"}
    assert store.put_many([later]).duplicates == []
    assert store.count() == 3 and store.duplicate_counts() == {}
    ran_after_all = store.put_many([{**run(1), "run_id": "b-dispatch", "scheduler": "b"}])
    assert [r["run_id"] for r in ran_after_all.duplicates] == ["b-dispatch"]
    assert store.duplicate_counts() == {"backup": 1}


def test_a_run_of_the_tick_replaces_a_missed_guess_under_another_run_id(store: Store) -> None:
    """A takeover records `missed` for a quorum tick its lost owner may have fired; when that
    owner's worker did run it, its record (another run id) replaces the guess, in any order."""
    guess = {**run(1, status="missed", worker=None, started=None, finished=None),
             "run_id": "guess-1"}  # fmt: skip
    store.put_many([guess])
    truth = store.put_many([run(1)])
    assert [r["run_id"] for r in truth.superseded] == ["backup-1"] and truth.duplicates == []
    assert [(r["run_id"], r["status"]) for r in store.query()] == [("backup-1", "ok")]
    late = {**guess, "run_id": "guess-2"}
    assert store.put_many([late]).new == []  # the tick ran: a later guess is moot
    assert store.count() == 1
    other_tick = {**guess, "run_id": "guess-3", "tick": guess["tick"] + 60}
    assert store.put_many([other_tick]).new == [other_tick]  # a true miss stays


def test_duplicates_are_counted_across_restarts_and_purges(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "runs"))
    store.put_many([run(1), run(1, run_id="twin", scheduler="b"), run(2)])
    store.put_many([run(2, run_id="twin-2", scheduler="b")])
    store.close()
    store = Store(str(tmp_path / "runs"))
    assert store.duplicate_counts() == {"backup": 2}
    store.purge_older_than(T0 + 1000)
    assert store.count() == 0 and store.duplicate_counts() == {"backup": 2}
    store.close()


def test_map_grows_when_full(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "sink"), map_size=64 * 1024)
    before = store.map_size()
    tail = "x" * 4000
    store.put_many([run(n, stdout_tail=tail) for n in range(200)])
    assert store.map_size() > before
    assert store.count() == 200
    store.close()


def test_purge_deletes_oldest_first_and_is_bounded(store: Store) -> None:
    store.put_many([run(n) for n in range(50)])
    cutoff = T0 + 30
    assert store.purge_older_than(cutoff, max_records=20) == 20
    assert store.purge_older_than(cutoff, max_records=20) == 10
    assert store.purge_older_than(cutoff, max_records=20) == 0
    assert store.count() == 20
    assert min(r["tick"] for r in store.query(limit=100)) == T0 + 30
    assert store.query(job="backup", limit=100)[-1]["run_id"] == "backup-30"


def test_purged_tick_may_be_stored_again_without_a_duplicate(store: Store) -> None:
    store.put_many([run(1)])
    store.purge_older_than(T0 + 10)
    assert store.put_many([run(1, run_id="late")]).duplicates == []


def test_records_and_last_runs_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "sink")
    store = Store(path)
    store.put_many([run(1), run(2, status="failed")])
    store.close()
    store = Store(path)
    assert store.count() == 2
    assert store.put_many([run(1)]).new == []
    last = store.last_runs()["backup"]
    assert last["last_run"]["status"] == "failed"
    assert last["last_success"] == T0 + 1.5
    store.close()


def test_last_runs_keep_the_newest_even_when_older_records_arrive_late(store: Store) -> None:
    store.put_many([run(5, job="a"), run(7, job="b", status="timeout")])
    stored = store.put_many([run(3, job="a", status="failed"), run(4, job="a")])
    last = store.last_runs()
    assert last["a"] == {
        "last_run": {
            "status": "ok",
            "tick": T0 + 5,
            "attempt": 1,
            "dispatched": T0 + 5.0004,
            "started": T0 + 5.001,
            "finished": T0 + 5.5,
            "exit_code": 0,
            "signal": None,
        },
        "last_success": T0 + 5.5,
        "last_started": T0 + 5,  # the newest tick that started
    }
    assert last["b"]["last_success"] is None
    assert stored.last_success == {}


def test_missed_ticks_leave_the_last_started_tick_alone(store: Store) -> None:
    """A job whose ticks are recorded missed (no worker) is late from its last started run."""
    store.put_many([run(1)])
    store.put_many([run(2, status="missed", started=None, finished=None)])
    assert store.last_runs()["backup"]["last_started"] == T0 + 1
    assert store.last_runs()["backup"]["last_run"]["status"] == "missed"


def test_last_success_survives_purge(store: Store) -> None:
    store.put_many([run(1)])
    store.purge_older_than(T0 + 100)
    assert store.count() == 0
    assert store.last_runs()["backup"]["last_success"] == T0 + 1.5


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_time_keys_sort_like_floats(a: float, b: float) -> None:
    assert (time_key(a) < time_key(b)) == (a < b)
    assert key_time(time_key(a)) == a


@pytest.mark.timeout(60)
def test_reopens_after_sigkill_mid_write_with_every_returned_batch(tmp_path: Path) -> None:
    path = str(tmp_path / "sink")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, str(BATCH)], stdout=subprocess.PIPE, text=True
    )
    try:
        returned = [int(writer.stdout.readline()) for _ in range(30)]  # type: ignore[union-attr]
    finally:
        writer.kill()  # SIGKILL, in the middle of a later batch
        writer.wait(10)
    returned += [int(line) for line in writer.stdout]  # type: ignore[union-attr]
    store = Store(path)
    try:
        count = store.count()
        assert count % BATCH == 0, "a batch was stored in part"
        assert count >= len(returned) * BATCH
        found = {r["run_id"] for r in store.query(limit=count + 1)}
        assert len(found) == count
        assert {f"b{b}-{k}" for b in returned for k in range(BATCH)} <= found
        assert store.put_many([run(1)]).new, "the reopened store takes writes"
    finally:
        store.close()


def test_a_filter_matching_nothing_stops_after_max_examined_and_says_so(store: Store) -> None:
    store.put_many([run(n) for n in range(50)])
    store.max_examined = 20
    found, complete = store.scan(status="refused", limit=10)
    assert found == [] and complete is False
    found, complete = store.scan(limit=10)
    assert len(found) == 10 and complete is True
