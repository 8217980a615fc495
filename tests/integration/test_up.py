"""`zcron up` end to end: real scheduler, worker and sink processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.harness import Cluster, Processes, child_pids, cmdline, tick_counts, wait_until

pytestmark = pytest.mark.timeout(90)

PER_SECOND = """\
SHELL=/bin/bash
# name: every-second
* * * * * *  -  echo "$ZCRON_JOB $ZCRON_TICK $EPOCHREALTIME" >> {out}
# name: every-second-too
* * * * * *  -  echo "$ZCRON_JOB $ZCRON_TICK $EPOCHREALTIME" >> {out}
"""


def start_up(procs: Processes, cluster: Cluster) -> subprocess.Popen:
    proc = procs.start("up", "-c", str(cluster.config_path), "--data", str(cluster.root / "data"))
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 20, "the sink's HTTP")
    return proc


def all_runs(cluster: Cluster, **params: object) -> list[dict]:
    return cluster.runs(limit=10000, **params)


def runs_after(cluster: Cluster, job: str, after: float) -> list[dict]:
    return [r for r in all_runs(cluster, job=job) if r["tick"] > after]


def test_per_second_jobs_run_exactly_once_per_tick(procs: Processes, cluster: Cluster) -> None:
    out = cluster.root / "out.txt"
    (cluster.schedules / "seconds").write_text(PER_SECOND.format(out=out))
    start_up(procs, cluster)
    wait_until(lambda: len(all_runs(cluster, job="every-second")) >= 7, 30, "7 runs")
    records = all_runs(cluster)
    for job in ("every-second", "every-second-too"):
        ticks = sorted(r["tick"] for r in records if r["job"] == job)
        counts = tick_counts(records, job, ticks[0], ticks[-1])
        assert len(counts) >= 6 and set(counts.values()) == {1}, counts
        assert all(r["status"] == "ok" and r["exit_code"] == 0 for r in records if r["job"] == job)
    lines = [line.split() for line in out.read_text().splitlines()]
    seen = [(job, float(tick)) for job, tick, _ in lines]
    assert len(seen) == len(set(seen)), "a tick ran twice"
    for _job, tick, started in lines:
        assert float(tick) == int(float(tick)), "ZCRON_TICK is the scheduled whole second"
        assert 0 <= float(started) - float(tick) < 1.0


def test_run_record_has_every_field_and_cli_shows_it(procs: Processes, cluster: Cluster) -> None:
    (cluster.schedules / "seconds").write_text(
        "# name: hello\n* * * * * *  -  echo hello; echo oops >&2; exit 3\n"
    )
    start_up(procs, cluster)
    rec = wait_until(lambda: all_runs(cluster, job="hello"), 20, "a run of hello")[0]
    assert set(rec) >= {
        "run_id",
        "job",
        "tick",
        "attempt",
        "scheduler",
        "worker",
        "pool",
        "dispatched",
        "started",
        "finished",
        "exit_code",
        "signal",
        "status",
        "stdout_tail",
        "stderr_tail",
    }
    assert rec["status"] == "failed" and rec["exit_code"] == 3 and rec["signal"] is None
    assert rec["stdout_tail"] == "hello\n" and rec["stderr_tail"] == "oops\n"
    assert rec["dispatched"] <= rec["started"] and rec["tick"] <= rec["started"] <= rec["finished"]
    assert rec["scheduler"] == "a" and rec["pool"] == "default" and rec["attempt"] == 1
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "zcron",
            "runs",
            "-c",
            str(cluster.config_path),
            "hello",
            "--json",
            "--limit",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert cli.returncode == 0, cli.stderr
    printed = [json.loads(line) for line in cli.stdout.splitlines()]
    assert printed and all(r["job"] == "hello" for r in printed)
    with urllib.request.urlopen(cluster.http + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'zcron_runs_total{job_name="hello",status="failed"}' in metrics
    assert "zcron_dispatch_lateness_seconds_bucket" in metrics
    assert 'zcron_job_interval_seconds{job_name="hello"} 1.0' in metrics


def test_edited_file_takes_effect_while_running(procs: Processes, cluster: Cluster) -> None:
    path = cluster.schedules / "jobs"
    path.write_text("# name: edited\n* * * * * *  -  echo v1\n")
    start_up(procs, cluster)
    wait_until(lambda: all_runs(cluster, job="edited"), 20, "v1 runs")
    path.write_text("# name: edited\n* * * * * *  -  echo v2\n")
    (cluster.schedules / "added.toml").write_text(
        '[added]\nschedule = "* * * * * *"\ncommand = ["echo", "new"]\n'
    )
    wait_until(
        lambda: any(r["stdout_tail"] == "v2\n" for r in all_runs(cluster, job="edited")),
        20,
        "the edited command to run",
    )
    wait_until(lambda: all_runs(cluster, job="added"), 20, "the added job to run")


def test_broken_file_keeps_its_last_good_version(procs: Processes, cluster: Cluster) -> None:
    path = cluster.schedules / "jobs"
    path.write_text("# name: steady\n* * * * * *  -  echo steady\n")
    proc = start_up(procs, cluster)
    wait_until(lambda: all_runs(cluster, job="steady"), 20, "runs of steady")
    path.write_text("# name: steady\n* * * * * *  -  echo steady\n61 * * * * * * nope\n")
    wait_until(lambda: f"{path}:3" in procs.log(proc), 20, "the file:line error in the log")
    broken_at = time.time()
    wait_until(
        lambda: len(runs_after(cluster, "steady", broken_at)) >= 2, 20, "the old job to keep firing"
    )


def test_sigterm_stops_everything_cleanly(procs: Processes, cluster: Cluster) -> None:
    proc = start_up(procs, cluster)
    children = wait_until(
        lambda: len(child_pids(proc.pid)) == 3 and child_pids(proc.pid), 10, "three children"
    )
    assert procs.stop(proc, signal.SIGTERM) == 0
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zcron" not in cmdline(pid)


def test_a_dead_child_stops_the_others_and_up_fails(procs: Processes, cluster: Cluster) -> None:
    proc = start_up(procs, cluster)
    children = wait_until(
        lambda: len(child_pids(proc.pid)) == 3 and child_pids(proc.pid), 10, "three children"
    )
    worker = next(pid for pid in children if " worker " in cmdline(pid))
    os.kill(worker, signal.SIGKILL)
    assert proc.wait(30) == 1
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zcron" not in cmdline(pid)
