"""Prefetch with real processes: a freed slot starts the next queued job with no scheduler
in the loop, and a worker killed with jobs in its queue loses none of their ticks."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, make_cluster, metric_value, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def start(
    procs: Processes, tmp_path: Path, slots: int, workers: int = 1
) -> tuple[Cluster, Path, subprocess.Popen, subprocess.Popen]:
    """A sink, a scheduler and workers w1.. with `slots`, heard; (cluster, marks directory,
    the scheduler's process, w1's)."""
    cluster = make_cluster(tmp_path, slots=slots)
    marks = tmp_path / "marks"
    marks.mkdir()
    config = str(cluster.config_path)
    procs.start("sink", "-c", config)
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink's HTTP")
    scheduler = procs.start("scheduler", "-c", config)
    worker, *_ = [procs.start("worker", "-c", config, "--id", f"w{n}", name=f"w{n}")
                  for n in range(1, workers + 1)]  # fmt: skip
    wait_until(lambda: heard(cluster, workers), 15, "the workers' first ready")
    return cluster, marks, scheduler, worker


def heard(cluster: Cluster, workers: int = 1) -> bool:
    """The sink has heard this many workers (their `ready`): they are up."""
    summary = cluster.get_json_or_none("/api/summary")
    return bool(summary) and sum(map(len, summary["pools"].values())) >= workers


def once(at: int) -> str:
    return f'schedule = "{at % 60} {at // 60 % 60} * * * *"\ntimezone = "UTC"'


def starts(marks: Path) -> dict[str, float]:
    """Job name -> when its command started (its own clock), for those that did."""
    found = {}
    for path in marks.iterdir():
        text = path.read_text().split()
        if text:
            found[path.name] = float(text[0])
    return found


def test_a_freed_slot_starts_the_next_queued_job_while_the_scheduler_is_stopped(
    procs: Processes, tmp_path: Path
) -> None:
    """slots = 2, four jobs due at one instant: two run, two wait in the worker's queue.
    The scheduler is SIGSTOPped as soon as the first two start: the other two still
    start when a slot frees, so no `ready` → scheduler → `job` round trip was needed."""
    cluster, marks, scheduler_proc, _ = start(procs, tmp_path, slots=2)
    at = math.ceil(time.time()) + 3
    jobs = "".join(f"[q{n}]\n{once(at)}\ncommand = 'date +%s.%N > {marks}/q{n}; sleep 1'\n"
                   for n in range(4))  # fmt: skip
    (cluster.schedules / "q.toml").write_text(jobs)
    first = wait_until(lambda: starts(marks), 15, "the first runs to start", every=0.005)
    scheduler_proc.send_signal(signal.SIGSTOP)
    try:
        stopped_at = time.time()
        assert len(first) <= 2, first
        started = wait_until(lambda: len(starts(marks)) == 4 and starts(marks), 10,
                             "the queued jobs to start with the scheduler stopped")  # fmt: skip
        times = sorted(started.values())
        assert times[2] > stopped_at and times[2] - times[0] >= 0.9, times  # after a slot freed
        assert times[3] - times[0] < 2.0, times  # and at once, not a heartbeat or more later
    finally:
        scheduler_proc.send_signal(signal.SIGCONT)
    runs = wait_until(lambda: len(cluster.runs(status="ok")) >= 4 and cluster.runs(status="ok"),
                      15, "the four records")  # fmt: skip
    assert sorted(r["job"] for r in runs if r["tick"] == at) == ["q0", "q1", "q2", "q3"]


def test_a_sigkilled_workers_queued_jobs_run_elsewhere_and_lose_no_tick(
    procs: Processes, tmp_path: Path
) -> None:
    """w1 (1 slot) runs a long job with three more queued behind it; it is SIGKILLed. The
    queued ones never started: they run on w2, each tick once, and the long one is lost."""
    cluster, marks, _, w1 = start(procs, tmp_path, slots=1)
    long_at = math.ceil(time.time()) + 2
    queued_at = long_at + 2
    jobs = f"[long]\n{once(long_at)}\ncommand = 'echo $$ > {marks}/long; exec sleep 60'\n"
    jobs += "".join(f"[q{n}]\n{once(queued_at)}\ncommand = 'echo ran > {marks}/q{n}'\n"
                    for n in range(3))  # fmt: skip
    (cluster.schedules / "q.toml").write_text(jobs)
    wait_until(lambda: (marks / "long").exists(), 15, "the long run to start")
    # past the queued jobs' instant, and a few of w1's heartbeats listing them queued
    wait_until(lambda: time.time() > queued_at + 0.5, 10, "the queued jobs' instant")
    assert not any((marks / f"q{n}").exists() for n in range(3)), "ran beside the long run"
    procs.stop(w1, signal.SIGKILL)
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w2", name="w2")
    done = wait_until(
        lambda: len(recs := [r for r in cluster.runs(limit=1000) if r["job"].startswith("q")])
        >= 3 and recs, 20, "the queued jobs' records")  # fmt: skip
    assert sorted((r["job"], r["tick"], r["attempt"], r["status"], r["worker"]) for r in done) == [
        (f"q{n}", queued_at, 1, "ok", "w2") for n in range(3)
    ], done
    lost = wait_until(lambda: cluster.runs(job="long", status="lost"), 15, "the lost record")
    assert "w1" in lost[0]["stderr_tail"], lost


def test_a_job_queued_at_a_busy_worker_is_recalled_when_another_frees(
    procs: Processes, tmp_path: Path
) -> None:
    """Two 1-slot workers busy (2 s and 4 s runs), two quick jobs due a second later go
    one to each queue; when the 2 s run ends, that worker starts its own quick job and
    then gets the other back (recall → returned → job): both start before the 4 s run
    ends, none waits behind it."""
    cluster, marks, _, _ = start(procs, tmp_path, slots=1, workers=2)
    at = math.ceil(time.time()) + 2
    jobs = "".join(f"[slow{n}]\n{once(at)}\ncommand = 'sleep {n}'\n" for n in (2, 4))
    jobs += "".join(f"[q{n}]\n{once(at + 1)}\ncommand = 'date +%s.%N > {marks}/q{n}'\n"
                    for n in range(2))  # fmt: skip
    (cluster.schedules / "q.toml").write_text(jobs)
    started = wait_until(lambda: len(starts(marks)) == 2 and starts(marks), 15, "both quick")
    assert max(started.values()) < at + 3.5, (at, started)  # the 4 s run ends at at + 4
    recs = wait_until(lambda: len(r := cluster.runs(job="q1") + cluster.runs(job="q0")) == 2
                      and r, 10, "the quick records")  # fmt: skip
    assert {(r["status"], r["attempt"]) for r in recs} == {("ok", 1)}, recs
    for name in ("zcron_scheduler_recalls_total", "zcron_scheduler_returned_runs_total"):
        wait_until(lambda n=name: (metric_value(cluster, n, scheduler="a") or 0) >= 1, 10, name)
