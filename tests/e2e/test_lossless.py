"""Spec §8.4 and §8.5 with real processes: the sink SIGKILLed twice and a worker SIGKILLed
once while 40 per-second jobs run. Every run that happened is stored exactly once, every
tick has exactly one first attempt, the runs the worker kill cut short are `lost` and its
parked runs run again elsewhere.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import (
    Cluster,
    Processes,
    make_cluster,
    metric_total,
    spooled,
    tick_counts,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

JOBS = 40
SINK_DOWN_S = 3.0
STEADY_S = 3.0
# A tick this close to the worker kill may have been cut short (lost): dispatched up to
# 0.5 s ahead, and the scheduler notices a dead worker within peer_timeout (0.6 s here).
LOST_BEFORE_S, LOST_AFTER_S = 1.5, 2.5


def schedule(marks: Path) -> str:
    """40 per-second jobs; each run leaves a file named by its run id (a builtin: no fork)."""
    lines = [f"MARKS={marks}"]
    for n in range(JOBS):
        lines += [f"# name: tick-{n:02d}", '* * * * * *  -  : > "$MARKS/$ZCRON_RUN_ID"']
    return "\n".join(lines) + "\n"


def all_runs(cluster: Cluster) -> list[dict]:
    return cluster.runs(limit=10000)


def start_sink(procs: Processes, cluster: Cluster) -> subprocess.Popen:
    proc = procs.start("sink", "-c", str(cluster.config_path))
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink's HTTP")
    return proc


def start_worker(procs: Processes, cluster: Cluster) -> subprocess.Popen:
    return procs.start("worker", "-c", str(cluster.config_path), "--id", "w1", "--slots", "100")


def kill(procs: Processes, proc: subprocess.Popen) -> float:
    """SIGKILL one process (its parked jobs are left to notice on their own); return when."""
    at = time.time()
    procs.stop(proc, signal.SIGKILL)
    return at


def steady(seconds: float) -> None:
    """Let the cluster run undisturbed (a measured window, not a wait for a condition)."""
    time.sleep(seconds)


def settled(cluster: Cluster, first: float, last: float) -> list[dict] | None:
    """All records, once the outboxes are empty and every tick in [first, last] is stored."""
    if spooled(cluster):
        return None
    records = all_runs(cluster)
    jobs = [f"tick-{n:02d}" for n in range(JOBS)]
    if all(min(tick_counts(records, job, first, last).values()) > 0 for job in jobs):
        return records
    return None


def test_sink_and_worker_kills_lose_no_run_and_store_none_twice(
    procs: Processes, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    (cluster.schedules / "forty").write_text(schedule(marks))
    sink = start_sink(procs, cluster)
    scheduler = procs.start("scheduler", "-c", str(cluster.config_path))
    worker = start_worker(procs, cluster)
    wait_until(lambda: len(all_runs(cluster)) >= 2 * JOBS, 30, "two rounds of runs")
    first = math.ceil(time.time()) + 1.0

    steady(STEADY_S)
    kill(procs, sink)
    steady(SINK_DOWN_S)  # results pile up in the worker's spool meanwhile
    sink = start_sink(procs, cluster)
    steady(STEADY_S)
    kill(procs, sink)
    sink = start_sink(procs, cluster)  # straight back this time
    steady(STEADY_S)
    worker_killed = kill(procs, worker)
    worker = start_worker(procs, cluster)
    steady(STEADY_S + 1)
    last = math.floor(time.time()) - 1.0

    # The jobs keep firing meanwhile: the runs that ran by now must all be stored, those
    # after it may not be yet (marks read after the records once showed a whole tick, 40
    # runs, that had started after the records were read, as "not stored").
    ran_by_now = {path.name for path in marks.iterdir()}

    def stored() -> list[dict] | None:
        records = settled(cluster, first, last)
        return records if records and ran_by_now <= {r["run_id"] for r in records} else None

    records = wait_until(stored, 30, "every tick stored, and every run that ran by then")
    assert scheduler.poll() is None and worker.poll() is None and sink.poll() is None

    run_ids = [r["run_id"] for r in records]
    assert len(run_ids) == len(set(run_ids)), "a run id stored twice"
    missing = ran_by_now - set(run_ids)
    assert not missing, f"{len(missing)} runs that ran are not stored"
    ran = {path.name for path in marks.iterdir()}  # after the records: every stored run's mark
    ok = {r["run_id"] for r in records if r["status"] == "ok"}
    assert ok <= ran, "an ok record for a run that never ran"

    for n in range(JOBS):
        counts = tick_counts(records, f"tick-{n:02d}", first, last)
        assert set(counts.values()) == {1}, f"tick-{n:02d}: {counts}"

    window = [r for r in records if first <= r["tick"] <= last and r["attempt"] == 1]
    # Runs the kill cut short are `lost`; those still parked (dispatched 0.5 s ahead) were
    # dispatched again (guarantee 10), so with these instant jobs there may be no `lost`.
    lost = [r for r in window if r["status"] == "lost"]
    for rec in lost:
        assert worker_killed - LOST_BEFORE_S <= rec["tick"] <= worker_killed + LOST_AFTER_S, rec
        assert "w1" in rec["stderr_tail"], rec
    others = {r["status"] for r in window if r["status"] != "lost"}
    assert others == {"ok"}, others
    assert metric_total(cluster, "zcron_duplicate_runs_total") == 0
