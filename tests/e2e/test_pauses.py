"""Guarantee 9 (spec §8): a scheduler stopped with SIGSTOP for seconds and then resumed runs
no tick twice and records no run that ran as `lost`. A resumed scheduler fences itself (a
new incarnation, firing only after a warm-up) and its dispatches queued before the stop are
refused by the worker as stale, not run."""

from __future__ import annotations

import math
import signal
import time
from collections import Counter

import pytest

from tests.e2e.test_failover import JOBS, busiest_owner, ran_until, start_scheduler, three
from tests.harness import Cluster, Processes, spooled, wait_until

__all__ = ["three"]  # the fixture, shared with the failover tests
pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
RAN = ("ok", "failed", "timeout", "killed")
PAUSE_S = 3.0


def runs_per_tick(records: list[dict], first: float, last: float) -> Counter:
    """(job, tick) -> first attempts that ran, over [first, last]."""
    ran = [r for r in records if r["attempt"] == 1 and r["status"] in RAN]
    return Counter((r["job"], r["tick"]) for r in ran if first <= r["tick"] <= last)


def test_a_paused_scheduler_resumes_without_running_any_tick_twice(
    procs: Processes, three: Cluster
) -> None:
    scheds = {sid: start_scheduler(procs, three, sid) for sid in "abc"}
    start = math.ceil(time.time())
    wait_until(lambda: ran_until(three, start + 3), 30, "the cluster to run every job")
    owner = busiest_owner(three, start + 2)
    first = math.ceil(time.time()) + 1.0
    scheds[owner].send_signal(signal.SIGSTOP)
    time.sleep(PAUSE_S)  # the fault itself: a stalled VM, a GC-sized pause
    scheds[owner].send_signal(signal.SIGCONT)
    last = math.floor(time.time()) + 4.0
    runs = wait_until(lambda: not spooled(three) and ran_until(three, last + 1), 40,
                      "every tick after the pause to be recorded")  # fmt: skip
    counts = runs_per_tick(runs, first, last)
    twice = {k: n for k, n in counts.items() if n > 1}
    missed = [(job, t) for job in JOBS for t in range(int(first), int(last) + 1)
              if (job, float(t)) not in counts]  # fmt: skip
    lost = [r for r in runs if r["status"] == "lost" and first - 1 <= r["tick"] <= last]
    assert not twice, f"{len(twice)} ticks ran twice: {sorted(twice)[:5]}"
    assert not missed, f"{len(missed)} ticks never ran: {missed[:5]}"
    assert not lost, f"{len(lost)} runs recorded lost: {lost[:2]}"
    assert all(p.poll() is None for p in procs.started)


def test_a_paused_worker_runs_no_stale_dispatch_and_no_tick_twice(
    procs: Processes, three: Cluster
) -> None:
    for sid in "abc":
        start_scheduler(procs, three, sid)
    start = math.ceil(time.time())
    wait_until(lambda: ran_until(three, start + 3), 30, "the cluster to run every job")
    worker = next(p for p in procs.started if "worker" in p.args)
    first = math.ceil(time.time()) + 1.0
    worker.send_signal(signal.SIGSTOP)
    time.sleep(PAUSE_S)  # jobs sent to it meanwhile wait in its socket
    worker.send_signal(signal.SIGCONT)
    last = math.floor(time.time()) + 4.0
    runs = wait_until(lambda: not spooled(three) and ran_until(three, last + 1), 40,
                      "every tick after the pause to be recorded")  # fmt: skip
    counts = runs_per_tick(runs, first, last)
    assert not {k: n for k, n in counts.items() if n > 1}, "a tick ran twice"
    refused = [r for r in runs if r["status"] == "refused"]
    assert all("stale dispatch" in r["stderr_tail"] for r in refused), refused[:2]
    resumed = [t for t in range(int(last) - 2, int(last) + 1)
               if all((job, float(t)) in counts for job in JOBS)]  # fmt: skip
    assert resumed, "the jobs did not run again after the pause"


def test_runs_parked_on_a_killed_worker_run_elsewhere_once(procs: Processes, tmp_path) -> None:
    """Guarantee 10: a worker SIGKILLed before its parked runs' instant (they are
    dispatched 0.5 s ahead) loses none of them: they run on the other worker, once."""
    from tests.harness import make_cluster

    cluster = make_cluster(tmp_path, slots=60)
    names = [f"p{i:02d}" for i in range(10)]
    (cluster.schedules / "jobs").write_text(
        "".join(f"# name: {n}\n* * * * * *  -  true\n" for n in names))  # fmt: skip
    config = str(cluster.config_path)
    procs.start("sink", "-c", config)
    workers = {w: procs.start("worker", "-c", config, "--id", w, name=w) for w in ("w1", "w2")}
    procs.start("scheduler", "-c", config)
    wait_until(lambda: {r["worker"] for r in cluster.runs(limit=200)} >= {"w1", "w2"}, 30,
               "both workers to run jobs")  # fmt: skip
    now = time.time()
    doomed_tick = math.ceil(now) + 1.0
    time.sleep(doomed_tick - 0.25 - time.time())  # its runs are parked, 0.25 s before the tick
    workers["w1"].kill()
    runs = wait_until(lambda: (r := cluster.runs(limit=500)) and not spooled(cluster) and
                      {x["job"] for x in r if x["tick"] >= doomed_tick + 2} >= set(names) and r,
                      30, "runs after the kill")  # fmt: skip
    ran = runs_per_tick(runs, doomed_tick, doomed_tick)
    assert {job: ran[(job, doomed_tick)] for job in names} == dict.fromkeys(names, 1), ran
    lost = [r for r in runs if r["status"] == "lost" and r["tick"] == doomed_tick]
    assert not lost, lost[:2]
