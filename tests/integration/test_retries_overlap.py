"""Scheduler-side job options with real processes: retries, overlap, durable delayed push."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, make_cluster, metric_value, wait_until

pytestmark = pytest.mark.timeout(90)


def start(procs: Processes, cluster: Cluster, workers: int = 1) -> subprocess.Popen:
    procs.start("sink", "-c", str(cluster.config_path))
    for i in range(workers):
        procs.start("worker", "-c", str(cluster.config_path), "--id", f"w{i + 1}")
    return procs.start("scheduler", "-c", str(cluster.config_path))


def at_least(cluster: Cluster, job: str, count: int) -> list[dict] | None:
    runs = cluster.runs(job=job)
    return runs if len(runs) >= count else None


def test_failed_runs_are_retried_on_another_worker(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "retry.toml").write_text(
        '[flaky]\nschedule = "*/10 * * * * *"\ncommand = \'echo "$ZCRON_ATTEMPT"; exit 1\'\n'
        'retries = 2\nretry_delay = "500ms"\n'
    )
    start(procs, cluster, workers=2)
    runs = wait_until(lambda: at_least(cluster, "flaky", 3), 40, "three attempts")
    tick = min(r["tick"] for r in runs)
    attempts = sorted((r for r in runs if r["tick"] == tick), key=lambda r: r["attempt"])
    assert [r["attempt"] for r in attempts] == [1, 2, 3]
    assert [r["stdout_tail"] for r in attempts] == ["1\n", "2\n", "3\n"]
    assert all(r["status"] == "failed" for r in attempts)
    assert attempts[1]["worker"] != attempts[0]["worker"]
    assert attempts[1]["started"] - attempts[0]["finished"] >= 0.5


def test_overlap_forbid_skips_ticks_while_a_run_is_on(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "slow.toml").write_text(
        '[slow]\nschedule = "* * * * * *"\ncommand = "sleep 2.5"\noverlap = "forbid"\n'
    )
    start(procs, cluster)
    runs = wait_until(lambda: at_least(cluster, "slow", 6), 40, "runs and skips")
    ran = sorted((r for r in runs if r["status"] == "ok"), key=lambda r: r["started"])
    assert any(r["status"] == "skipped" for r in runs)
    assert all(a["finished"] <= b["started"] for a, b in zip(ran, ran[1:], strict=False))
    ticks = [r["tick"] for r in runs]
    assert len(ticks) == len(set(ticks)), "each tick is run or skipped, once"


def test_delayed_push_survives_a_scheduler_restart(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path)
    marker = tmp_path / "pushed"
    scheduler = start(procs, cluster)
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 20, "the sink")
    pushed = wait_until(lambda: subprocess.run(
        [sys.executable, "-m", "zcron", "push", "-c", str(cluster.config_path), "--in", "4s",
         "--", "touch", str(marker)], capture_output=True, text=True, timeout=20,
    ).returncode == 0, 20, "the push to be accepted")  # fmt: skip
    assert pushed
    scheduler.send_signal(signal.SIGKILL)
    scheduler.wait(10)
    assert not marker.exists()
    procs.start("scheduler", "-c", str(cluster.config_path))
    wait_until(marker.exists, 20, "the pushed command to run after the restart")
    assert time.time() > marker.stat().st_mtime - 1


def test_overlap_replace_kills_the_old_run(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "long.toml").write_text(
        '[long]\nschedule = "*/2 * * * * *"\ncommand = "sleep 30"\noverlap = "replace"\n'
    )
    start(procs, cluster)
    runs = wait_until(lambda: at_least(cluster, "long", 2), 40, "a replaced run")
    replaced = [r for r in runs if r["status"] == "killed"]
    assert replaced and "replace" in replaced[0]["stderr_tail"]


def test_a_pool_without_workers_shows_in_status_and_metrics(
    tmp_path: Path, procs: Processes
) -> None:
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "gpu.toml").write_text(
        '[render]\nschedule = "0 0 1 1 *"\ncommand = "true"\npool = "gpu"\n'
    )
    start(procs, cluster)
    out = wait_until(lambda: subprocess.run(
        [sys.executable, "-m", "zcron", "status", "-c", str(cluster.config_path)],
        capture_output=True, text=True, timeout=20).stdout, 20, "status")  # fmt: skip
    assert "pool gpu: 0 workers" in out
    assert wait_until(lambda: metric_value(cluster, "zcron_pool_workers", pool="gpu") == 0.0,
                      20, "the gpu pool's metric")  # fmt: skip
    # the worker's own report reaches the sink on its heartbeat, apart from the scheduler's
    assert wait_until(lambda: metric_value(cluster, "zcron_pool_workers", pool="default") == 1.0,
                      20, "the default pool's metric")  # fmt: skip


def test_overlap_forbid_holds_across_a_takeover(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path, ("a", "b"))
    (cluster.schedules / "slow.toml").write_text(
        '[slow]\nschedule = "* * * * * *"\ncommand = "sleep 3.5"\noverlap = "forbid"\n'
    )
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    scheds = {sid: procs.start("scheduler", "-c", str(cluster.config_path), "--id", sid,
                               name=f"sched-{sid}") for sid in "ab"}  # fmt: skip
    first = wait_until(lambda: at_least(cluster, "slow", 1), 30, "a first run")[0]
    owner = first["scheduler"]
    scheds[owner].send_signal(signal.SIGKILL)  # its run is still sleeping on the worker
    scheds[owner].wait(10)
    survivor = "b" if owner == "a" else "a"
    runs = wait_until(
        lambda: (r := at_least(cluster, "slow", 1)) and any(
            x["scheduler"] == survivor and x["status"] == "ok" for x in r) and r,
        40, "the survivor to run the job",
    )  # fmt: skip
    ran = sorted((r for r in runs if r["status"] == "ok"), key=lambda r: r["started"])
    assert all(a["finished"] <= b["started"] for a, b in zip(ran, ran[1:], strict=False))
    assert any(r["status"] == "skipped" and r["scheduler"] == survivor for r in runs)


def test_ticks_waiting_for_a_slot_start_once(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path, slots=1)
    (cluster.schedules / "busy.toml").write_text(
        '[busy]\nschedule = "* * * * * *"\ncommand = "sleep 1.5"\nmisfire_grace = "4s"\n'
    )
    start(procs, cluster)
    runs = wait_until(lambda: at_least(cluster, "busy", 8), 40, "runs and missed ticks")
    started = [r["tick"] for r in runs if r["attempt"] == 1 and r["status"] != "missed"]
    assert len(started) == len(set(started)), "a waiting tick was started twice"
    assert any(r["status"] == "missed" for r in runs), "ticks waited past the grace"


def test_an_overloaded_pool_keeps_one_waiting_tick_per_job_and_runs_it_on_time(
    tmp_path: Path, procs: Processes
) -> None:
    """Spec §8.13: a job that takes 2.5 s on the only slot, due every second, with a minute
    of misfire_grace: its older waiting ticks are recorded missed as newer ones come, so
    each run starts within about one run's length of its tick, not a growing backlog."""
    cluster = make_cluster(tmp_path, slots=1)
    (cluster.schedules / "slow.toml").write_text(
        '[slow]\nschedule = "* * * * * *"\ncommand = "sleep 2.5"\nmisfire_grace = "60s"\n'
    )
    start(procs, cluster)
    runs = wait_until(lambda: (r := cluster.runs(job="slow", limit=200)) and
                      sum(x["status"] == "ok" for x in r) >= 4 and r, 40, "four runs")  # fmt: skip
    started = [r for r in runs if r["status"] == "ok"]
    late = [r["started"] - r["tick"] for r in started]
    assert max(late) < 3.5, f"a backlog built up: lateness {late}"
    missed = [r for r in runs if r["status"] == "missed"]
    assert missed and all("at most one tick of a job waits" in r["stderr_tail"] for r in missed)
    ticks = [r["tick"] for r in runs if r["attempt"] == 1]
    assert len(ticks) == len(set(ticks)), "a tick was both run and missed, or run twice"
