"""Worker pools with real processes: dispatch by announced slots, worker loss, drain."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, make_cluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def start(procs: Processes, cluster: Cluster, *workers: str) -> list[subprocess.Popen]:
    """A sink, a scheduler and the named workers; the workers' processes, in order."""
    config = str(cluster.config_path)
    procs.start("sink", "-c", config)
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink's HTTP")
    procs.start("scheduler", "-c", config)
    return [procs.start("worker", "-c", config, "--id", w, name=w) for w in workers]


def test_quick_jobs_never_wait_behind_a_busy_worker(procs: Processes, tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, slots=1)
    lines = ["# name: long", "*/5 * * * * *  -  sleep 3.5"]
    for n in range(6):
        lines += [f"# name: quick-{n}", "* * * * * *  -  :"]
    (cluster.schedules / "jobs").write_text("\n".join(lines) + "\n")
    start(procs, cluster, "w1", "w2")
    wait_until(lambda: cluster.runs(job="long", status="ok"), 20, "a first long run")
    first = math.ceil(time.time())
    wait_until(lambda: time.time() > first + 10.5, 12, "ten more seconds")  # two long runs
    runs = [r for r in cluster.runs(limit=5000) if first <= r["tick"] <= first + 10]
    quick = [r for r in runs if r["job"].startswith("quick-")]
    assert len(quick) == 6 * 11, sorted((r["job"], r["tick"]) for r in quick)
    assert {r["status"] for r in quick} == {"ok"}
    assert {r["worker"] for r in quick} == {"w1", "w2"}
    late = sorted(round((r["started"] - r["tick"]) * 1000, 1) for r in quick)
    assert late[-1] < 100, f"lateness ms: {late}"


def test_killed_worker_records_its_run_lost_under_the_same_run_id(
    procs: Processes, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    toml = f"""[slow]
schedule = "*/2 * * * * *"
command = 'echo $$ > {marks}/$ZCRON_RUN_ID; exec sleep 30'
overlap = "forbid"
"""
    (cluster.schedules / "slow.toml").write_text(toml)
    (worker,) = start(procs, cluster, "w1")
    path = wait_until(lambda: next(marks.iterdir(), None), 15, "a run to start")
    try:
        procs.stop(worker, signal.SIGKILL)
        lost = wait_until(lambda: cluster.runs(status="lost"), 10, "a lost record")
        assert path.name in {r["run_id"] for r in lost}, lost
        rec = next(r for r in lost if r["run_id"] == path.name)
        assert rec["job"] == "slow" and "w1" in rec["stderr_tail"], rec
    finally:
        for mark in marks.iterdir():
            _kill(int(mark.read_text()))


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, ValueError):
        pass


def workers_seen(cluster: Cluster) -> dict[str, dict]:
    """The scheduler's view of the workers (`zcron status --json`), by worker id."""
    out = subprocess.run(
        [sys.executable, "-m", "zcron", "status", "-c", str(cluster.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    view = json.loads(out.stdout)["schedulers"]["a"]
    return {w["id"]: w for w in view.get("workers", [])}


def test_sigterm_drains_lets_runs_finish_kills_stragglers_and_exits_zero(
    procs: Processes, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path, slots=3)
    text = cluster.config_path.read_text()
    cluster.config_path.write_text(text.replace("[worker]\n", '[worker]\ndrain_timeout = "2s"\n'))
    marks = tmp_path / "marks"
    marks.mkdir()
    at = math.ceil(time.time()) + 3
    once = f'schedule = "{at % 60} {at // 60 % 60} * * * *"\ntimezone = "UTC"'
    (cluster.schedules / "drain.toml").write_text(f"""[short]
{once}
command = "echo $$ > {marks}/short; sleep 2; echo finished"
[stubborn]
{once}
command = "echo $$ > {marks}/stubborn; trap '' TERM; sleep 30"
[quick]
schedule = "* * * * * *"
command = ":"
""")
    (worker,) = start(procs, cluster, "w1")
    wait_until(lambda: len(list(marks.iterdir())) == 2, 15, "both runs to start")
    wait_until(lambda: workers_seen(cluster)["w1"]["free"] == 1, 5, "w1 to have 1 slot free")
    term_at = time.time()
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: workers_seen(cluster)["w1"]["free"] == 0, 5, "w1 to announce 0 free")
    try:
        assert worker.wait(2 + 5 + 5) == 0
    finally:
        _kill(int((marks / "stubborn").read_text()))
    assert list((tmp_path / "worker").glob("*.rec")) == [], "results left undelivered"
    runs = {r["job"]: r for r in cluster.runs(limit=1000) if r["tick"] == at}
    assert runs["short"]["status"] == "ok" and runs["short"]["stdout_tail"] == "finished\n"
    assert (runs["stubborn"]["status"], runs["stubborn"]["signal"]) == ("killed", 9)
    assert runs["stubborn"]["finished"] - term_at >= 2 + 5  # drain timeout, TERM, grace, KILL
    late = [r for r in cluster.runs(job="quick", limit=1000) if (r["started"] or 0) > term_at]
    assert late == [], "the draining worker took a new job"


def test_sighup_rereads_slots_and_pools(procs: Processes, tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, slots=1)
    (worker,) = start(procs, cluster, "w1")
    wait_until(lambda: workers_seen(cluster).get("w1"), 10, "the worker's announcement")
    text = cluster.config_path.read_text()
    cluster.config_path.write_text(text.replace("slots = 1", 'slots = 3\npool = ["default", "db"]'))
    worker.send_signal(signal.SIGHUP)
    seen = wait_until(
        lambda: workers_seen(cluster)["w1"]["slots"] == 3 and workers_seen(cluster)["w1"],
        10,
        "the new slot count",
    )
    assert seen["pools"] == ["default", "db"] and worker.poll() is None
