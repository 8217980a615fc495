"""Scheduler cluster behaviour with real processes: restarts, disagreement, clocks, soak."""

from __future__ import annotations

import json
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import (
    Cluster,
    Processes,
    make_cluster,
    metric_value,
    tick_counts,
    wait_until,
)
from tests.tools import ensure_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
LEAD_S = 0.5  # zcron.scheduler.LEAD_S: ticks are dispatched this far ahead


def start_scheduler(
    procs: Processes,
    cluster: Cluster,
    sid: str,
    config: Path | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen:
    args = ["scheduler", "-c", str(config or cluster.config_path), "--id", sid]
    return procs.start(*args, name=f"sched-{sid}", prefix=prefix)


def start_rest(procs: Processes, cluster: Cluster) -> None:
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")


def status(cluster: Cluster, config: Path | None = None) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "zcron",
            "status",
            "-c",
            str(config or cluster.config_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return json.loads(out.stdout)["schedulers"]


def exactly_once(runs: list[dict], jobs: list[str], first: float, last: float) -> dict:
    """{job: {tick: count}} for every tick that did not run exactly once."""
    problems = {}
    for job in jobs:
        bad = {t: n for t, n in tick_counts(runs, job, first, last).items() if n != 1}
        if bad:
            problems[job] = bad
    return problems


def firing(cluster: Cluster, jobs: list[str]) -> float:
    """The first whole second after every job has run once: a fresh cluster owes no tick
    from before it started firing, so exactly-once is checked from there."""
    wait_until(lambda: {r["job"] for r in cluster.runs(limit=1000)} >= set(jobs), 30, "runs")
    return float(int(time.time()) + 1)


def all_ran(cluster: Cluster, jobs: list[str], tick: float) -> list[dict] | None:
    runs = cluster.runs(limit=10000)
    done = {r["job"] for r in runs if r["tick"] >= tick and r["finished"]}
    return runs if done >= set(jobs) else None


CATCH_UP = """
[catchup-none]
schedule = "* * * * * *"
command = "true"
catch_up = "none"
misfire_grace = "20s"

[catchup-last]
schedule = "* * * * * *"
command = "true"
catch_up = "last"
misfire_grace = "20s"

[catchup-all]
schedule = "* * * * * *"
command = "true"
catch_up = "all"
misfire_grace = "20s"
"""


def test_whole_cluster_restart_catches_up_per_policy(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path, ("a", "b"), slots=40)
    (cluster.schedules / "catchup.toml").write_text(CATCH_UP)
    start_rest(procs, cluster)
    scheds = [start_scheduler(procs, cluster, sid) for sid in "ab"]
    wait_until(lambda: len(cluster.runs(job="catchup-all")) >= 2, 30, "runs before the outage")
    for proc in scheds:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    down_from = time.time() + LEAD_S  # ticks dispatched ahead before the kill still run
    wait_until(lambda: time.time() > down_from + 3.5, 10, "3 s with no scheduler")
    restarted_at = time.time()
    for sid in "ab":
        start_scheduler(procs, cluster, sid)
    jobs = ["catchup-none", "catchup-last", "catchup-all"]
    runs = wait_until(lambda: all_ran(cluster, jobs, restarted_at + 4), 30, "runs after restart")

    firing_from = min(view["since"] for view in status(cluster).values())

    def caught_up(job: str) -> list[float]:
        """Ticks of the outage and the restart's warm-up that ran (late, after the restart)."""
        return sorted(
            r["tick"] for r in runs if r["job"] == job and down_from < r["tick"] < firing_from
        )

    unfired = caught_up("catchup-all")
    assert unfired[0] == float(int(down_from) + 1) and len(unfired) >= 4
    assert unfired == [unfired[0] + i for i in range(len(unfired))]
    assert caught_up("catchup-last") == unfired[-1:]
    assert caught_up("catchup-none") == []
    assert not exactly_once(runs, ["catchup-all"], unfired[0], restarted_at + 4)
    assert not exactly_once(runs, jobs, unfired[-1] + 1, restarted_at + 4)


def test_a_job_only_some_schedulers_know_still_fires_once(tmp_path: Path, procs: Processes):
    cluster = make_cluster(tmp_path, ("a", "b", "c"), slots=40)
    common = "".join(f"# name: common{i}\n* * * * * *  -  true\n" for i in range(6))
    (cluster.schedules / "jobs").write_text(common)
    extra_dir = tmp_path / "zcron-c.d"
    extra_dir.mkdir()
    (extra_dir / "jobs").write_text(common + "# name: only-c\n* * * * * *  -  true\n")
    config_c = tmp_path / "zcron-c.conf"
    config_c.write_text(
        cluster.config_path.read_text().replace(str(cluster.schedules), str(extra_dir))
    )
    start_rest(procs, cluster)
    start_scheduler(procs, cluster, "a")
    start_scheduler(procs, cluster, "b")
    start_scheduler(procs, cluster, "c", config=config_c)
    jobs = [f"common{i}" for i in range(6)] + ["only-c"]
    first = firing(cluster, jobs)
    runs = wait_until(lambda: all_ran(cluster, jobs, first + 4), 30, "5 s of runs")
    assert not exactly_once(runs, jobs, first, first + 4)
    assert {r["scheduler"] for r in runs if r["job"] == "only-c" and r["tick"] >= first} == {"c"}
    views = status(cluster)
    assert views["a"]["peers"]["c"]["digest"] != views["a"]["digest"]
    assert metric_value(cluster, "zcron_config_digest_agrees", scheduler="a") == 0.0


def skew_seen(views: dict) -> dict | None:
    """The views once c has stepped down and a has c's clock offset (each hears the other
    on its own heartbeats, so either can come first)."""
    stepped_down = views["c"].get("eligible") is False
    measured = views["a"].get("peers", {}).get("c", {}).get("clock_offset") is not None
    return views if stepped_down and measured else None


def test_a_scheduler_with_a_skewed_clock_stops_firing(tmp_path: Path, procs: Processes) -> None:
    ensure_tool("faketime", "faketime")
    cluster = make_cluster(tmp_path, ("a", "b", "c"), slots=40)
    jobs = [f"j{i}" for i in range(9)]
    (cluster.schedules / "jobs").write_text(
        "".join(f"# name: {j}\n* * * * * *  -  true\n" for j in jobs)
    )
    start_rest(procs, cluster)
    start_scheduler(procs, cluster, "a")
    start_scheduler(procs, cluster, "b")
    start_scheduler(procs, cluster, "c", prefix=("faketime", "-f", "+3s"))
    views = wait_until(lambda: skew_seen(status(cluster)), 30, "c to step down, a to see why")
    assert "clock" in views["c"]["reason"]
    assert abs(views["a"]["peers"]["c"]["clock_offset"] - 3.0) < 0.5
    first = firing(cluster, jobs)
    runs = wait_until(lambda: all_ran(cluster, jobs, first + 3), 30, "runs")
    assert not exactly_once(runs, jobs, first, first + 3)
    assert "c" not in {r["scheduler"] for r in runs if r["tick"] >= first}
    # Reports reach the sink every 2 s and list the peers live at that moment: wait for one.
    offset = wait_until(
        lambda: metric_value(cluster, "zcron_peer_clock_offset_seconds", peer="c", scheduler="a"),
        10,
        "a's report of c's clock offset",
    )
    assert abs(offset - 3.0) < 0.5
    assert metric_value(cluster, "zcron_scheduler_eligible", scheduler="c") == 0.0


@pytest.mark.soak
def test_soak_random_kills_and_restarts_lose_and_duplicate_nothing(
    tmp_path: Path, procs: Processes
) -> None:
    rng = random.Random(7)
    ids = ("a", "b", "c", "d", "e")
    cluster = make_cluster(tmp_path, ids, slots=120)
    jobs = [f"s{i:02d}" for i in range(20)]
    (cluster.schedules / "jobs").write_text(
        "".join(f"# name: {j}\n* * * * * *  -  true\n" for j in jobs)
    )
    start_rest(procs, cluster)
    scheds = {sid: start_scheduler(procs, cluster, sid) for sid in ids}
    wait_until(lambda: len({r["scheduler"] for r in cluster.runs(limit=500)}) >= 4, 40, "warm")
    first = float(int(time.time()) + 1)
    until = time.time() + 40
    kills = 0
    while time.time() < until:
        alive = [sid for sid, p in scheds.items() if p.poll() is None]
        dead = [sid for sid, p in scheds.items() if p.poll() is not None]
        if dead and (len(alive) <= 3 or rng.random() < 0.4):
            sid = rng.choice(dead)
            print(f"START {sid} at {time.time():.3f}")
            scheds[sid] = start_scheduler(procs, cluster, sid)
        else:
            sid = rng.choice(alive)
            print(f"KILL {sid} at {time.time():.3f}")
            scheds[sid].send_signal(signal.SIGKILL)
            scheds[sid].wait(10)
            kills += 1
        pause = rng.uniform(1.0, 3.0)
        resume = time.time() + pause
        wait_until(lambda resume=resume: time.time() > resume, 5, "the pause")
    last = float(int(time.time()) + 2)
    runs = wait_until(lambda: all_ran(cluster, jobs, last), 30, "the last tick")
    problems = exactly_once(runs, jobs, first, last)
    window = [r for r in runs if first <= r["tick"] <= last and r["attempt"] == 1]
    lateness_ms = sorted((r["started"] - r["tick"]) * 1000 for r in window)
    print(
        f"soak: {kills} kills, {len(window)} runs, missed "
        f"{sum(n == 0 for p in problems.values() for n in p.values())}, duplicates "
        f"{sum(n > 1 for p in problems.values() for n in p.values())}, lateness ms p50 "
        f"{statistics.median(lateness_ms):.1f} p99 {lateness_ms[int(0.99 * len(window))]:.1f} "
        f"max {lateness_ms[-1]:.1f}"
    )
    for job, bad in problems.items():
        for tick in bad:
            for r in window:
                if r["job"] == job and r["tick"] == tick:
                    print("DUP", job, tick, r["scheduler"], f"{r['dispatched'] - tick:+.3f}")
    assert kills >= 8
    assert not problems
