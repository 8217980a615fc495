"""Follow-ups with real processes: chained jobs, failure hooks, retries across SIGKILL.

Three schedulers, one worker, one sink. A child (`after`) runs once per tick its parent's
run ended ok and is recorded `skipped` after a failed one, also when the scheduler that
owned the parent is SIGKILLed while the parent runs; a failure hook runs once per failed
run with that run's environment; a retry planned by a SIGKILLed scheduler runs once.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, make_cluster, metric_value, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def start_cluster(tmp_path: Path, procs: Processes, jobs: str) -> tuple[Cluster, dict]:
    cluster = make_cluster(tmp_path, ("a", "b", "c"), slots=16)
    (cluster.schedules / "jobs.toml").write_text(jobs)
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    scheds = {
        sid: procs.start("scheduler", "-c", str(cluster.config_path), "--id", sid,
                         name=f"sched-{sid}")
        for sid in "abc"
    }  # fmt: skip
    return cluster, scheds


def records(cluster: Cluster, job: str) -> list[dict]:
    return cluster.runs(job=job, limit=10000)


def kill(scheds: dict, sid: str) -> None:
    scheds[sid].send_signal(signal.SIGKILL)
    scheds[sid].wait(10)


def chain_gaps(parents: list[dict], children: list[dict]) -> list[float]:
    """Seconds from each ok parent's end to its child's start."""
    ended = {round(p["tick"], 6): p["finished"] for p in parents if p["status"] == "ok"}
    return sorted(c["started"] - ended[round(c["tick"], 6)] for c in children
                  if c["status"] == "ok" and round(c["tick"], 6) in ended)  # fmt: skip


def chain_problems(parents: list[dict], children: list[dict]) -> dict[float, str]:
    """Per parent tick that ended, what is wrong with its children (empty: all fine)."""
    by_tick: dict[float, list[dict]] = {}
    for rec in children:
        by_tick.setdefault(round(rec["tick"], 6), []).append(rec)
    problems = {}
    for parent in parents:
        tick = round(parent["tick"], 6)
        kids = by_tick.get(tick, [])
        want = "ok" if parent["status"] == "ok" else "skipped"
        if [k["status"] for k in kids] != [want]:
            problems[tick] = f"parent {parent['status']}, children {[k['status'] for k in kids]}"
        elif want == "skipped" and "parent" not in kids[0]["stderr_tail"]:
            problems[tick] = f"skipped without naming the parent: {kids[0]['stderr_tail']!r}"
    return problems


def settled(cluster: Cluster, parent: str, child: str, last_tick: float):
    """(parents, children) once every parent tick up to last_tick has its child record."""
    parents = [r for r in records(cluster, parent) if r["tick"] <= last_tick and r["finished"]]
    children = records(cluster, child)
    ticks = {round(r["tick"], 6) for r in children}
    if parents and all(round(p["tick"], 6) in ticks for p in parents):
        return parents, children
    return None


CHAIN = """
[extract]
schedule = "* * * * * *"
# every third tick fails
command = 'test $(( ${ZCRON_TICK%.*} % 3 )) -ne 0'

[load]
after = ["extract"]
command = "true"
"""


def test_child_runs_once_per_ok_parent_tick_and_is_skipped_after_a_failed_one(
    tmp_path: Path, procs: Processes
):
    cluster, _ = start_cluster(tmp_path, procs, CHAIN)
    wait_until(lambda: len(records(cluster, "load")) >= 6, 40, "six child records")
    last = max(r["tick"] for r in records(cluster, "extract"))
    parents, children = wait_until(lambda: settled(cluster, "extract", "load", last), 15,
                                   "every parent tick's child")  # fmt: skip
    assert {p["status"] for p in parents} == {"ok", "failed"}, parents
    assert not chain_problems(parents, children)
    assert all(c["attempt"] == 1 for c in children)
    gaps = chain_gaps(parents, children)
    print(f"parent end to child start: median {gaps[len(gaps) // 2] * 1000:.0f} ms, "
          f"max {gaps[-1] * 1000:.0f} ms over {len(gaps)}")
    assert gaps[-1] < 1.0, gaps
    jobs = {j["job"]: j for j in cluster.get_json("/api/jobs")}
    assert jobs["load"]["after"] == ["extract"]


SLOW_CHAIN = CHAIN.replace('"* * * * * *"', '"*/2 * * * * *"').replace(
    "command = 'test", "command = 'sleep 1; test")


def test_child_runs_once_across_a_sigkill_of_the_parents_scheduler(
    tmp_path: Path, procs: Processes
):
    cluster, scheds = start_cluster(tmp_path, procs, SLOW_CHAIN)
    wait_until(lambda: len(records(cluster, "load")) >= 2, 40, "the chain to run")
    # Kill the parent's scheduler while the parent runs (it sleeps 1 s from its tick): its
    # end then reaches the survivors only.
    owner = records(cluster, "extract")[0]["scheduler"]  # newest first; stable in one view
    killed_tick = float(int(time.time()) // 2 * 2 + 2)
    while killed_tick % 3 == 0:  # a tick whose parent ends ok: its child must run
        killed_tick += 2
    time.sleep(max(0.0, killed_tick + 0.4 - time.time()))
    kill(scheds, owner)
    wait_until(lambda: any(r["tick"] >= killed_tick + 6 for r in records(cluster, "load")), 40,
               "the chain to go on after the kill")  # fmt: skip
    last = killed_tick + 6
    parents, children = wait_until(lambda: settled(cluster, "extract", "load", last), 15,
                                   "every parent tick's child")  # fmt: skip
    at_kill = [p for p in parents if p["tick"] == killed_tick]
    assert [p["scheduler"] for p in at_kill] == [owner], at_kill  # it ran the parent
    assert not chain_problems(parents, children), (owner, killed_tick)
    after_kill = [c for c in children if c["tick"] >= killed_tick]
    assert after_kill and all(c["scheduler"] != owner for c in after_kill)
    gaps = chain_gaps(at_kill, children)
    print(f"child of the tick whose parent's scheduler was killed: {gaps[0] * 1000:.0f} ms "
          "after the parent's end")


HOOKS = """
[flaky]
schedule = "*/2 * * * * *"
command = "exit 3"
retries = 1
on_failure = 'env > {out}/$ZCRON_FAILED_RUN_ID.$ZCRON_RUN_ID.env'

[hook-fails]
schedule = "*/2 * * * * *"
command = "false"
on_failure = "exit 1"
"""


def hook_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_hook_runs_once_per_failed_run_with_its_environment(tmp_path: Path, procs: Processes):
    out = tmp_path / "hooks"
    out.mkdir()
    cluster, _ = start_cluster(tmp_path, procs, HOOKS.format(out=out))
    wait_until(lambda: len(records(cluster, "flaky:on_failure")) >= 3, 40, "three hook runs")
    wait_until(lambda: len(records(cluster, "hook-fails:on_failure")) >= 3, 20, "failing hooks")
    time.sleep(1.5)  # a loop or a second hook would show up within a tick
    final = [r for r in records(cluster, "flaky") if r["attempt"] == 2]
    hooks = records(cluster, "flaky:on_failure")
    first = [r for r in records(cluster, "flaky") if r["attempt"] == 1]
    assert {r["status"] for r in first + final} == {"failed"}
    hooked = Counter(hook_env(p)["ZCRON_FAILED_RUN_ID"] for p in out.glob("*.env"))
    # once per failed run, after its retry: every final failure that is older than a
    # tick has its one hook; a first attempt (retried) has none
    old_final = {r["run_id"] for r in final if r["finished"] < time.time() - 1.5}
    assert old_final and old_final <= set(hooked), (old_final, hooked)
    assert max(hooked.values()) == 1 and not set(hooked) & {r["run_id"] for r in first}
    rec = next(r for r in final if r["run_id"] in hooked)
    (path,) = out.glob(f"{rec['run_id']}.*.env")
    env = hook_env(path)
    assert env["ZCRON_STATUS"] == "failed" and env["ZCRON_EXIT_CODE"] == "3"
    assert float(env["ZCRON_TICK"]) == rec["tick"] and env["ZCRON_ATTEMPT"] == "2"
    assert env["ZCRON_JOB"] == "flaky:on_failure"
    assert {h["status"] for h in hooks} == {"ok"}
    assert abs(len(hooks) - len(hooked)) <= 1  # the newest's file or record may be on its way
    assert {h["run_id"] for h in hooks} <= {hook_env(p)["ZCRON_RUN_ID"] for p in out.glob("*")}
    failing = records(cluster, "hook-fails:on_failure")
    assert {h["status"] for h in failing} == {"failed"}
    assert not records(cluster, "hook-fails:on_failure:on_failure")
    ran = len(records(cluster, "hook-fails"))
    assert ran - 1 <= len(failing) <= ran  # one per failed run, the newest may be on its way
    assert (metric_value(cluster, "zcron_runs_total", job_name="flaky:on_failure",
                         status="ok") or 0) >= 3  # fmt: skip


RETRY = """
[second-try]
schedule = "*/4 * * * * *"
command = 'test "$ZCRON_ATTEMPT" -ge 2'
retries = 1
retry_delay = "2s"
"""


def test_retry_planned_by_a_sigkilled_scheduler_runs_once(tmp_path: Path, procs: Processes):
    cluster, scheds = start_cluster(tmp_path, procs, RETRY)
    wait_until(lambda: any(r["attempt"] == 2 for r in records(cluster, "second-try")), 40,
               "a first retry")  # fmt: skip
    # Right after an attempt fails (its retry 2 s away), kill the scheduler that ran it.
    seen = {r["run_id"] for r in records(cluster, "second-try")}
    failed = wait_until(
        lambda: next((r for r in records(cluster, "second-try") if r["attempt"] == 1
                      and r["finished"] and r["run_id"] not in seen), None),
        10, "a new failed first attempt", every=0.01)  # fmt: skip
    assert time.time() < failed["finished"] + 1.5, "found too late to test the planner's death"
    kill(scheds, failed["scheduler"])
    tick = failed["tick"]
    retried = wait_until(
        lambda: [r for r in records(cluster, "second-try") if r["tick"] == tick
                 and r["attempt"] == 2 and r["finished"]],
        15, "the retry of the killed scheduler's run")  # fmt: skip
    time.sleep(1.0)  # a second copy would be here by now
    retried = [r for r in records(cluster, "second-try") if r["tick"] == tick and r["attempt"] == 2]
    assert len(retried) == 1 and retried[0]["status"] == "ok", retried
    assert retried[0]["scheduler"] != failed["scheduler"]
    late = retried[0]["started"] - (failed["finished"] + 2.0)
    print(f"retry of the killed planner's run started {late * 1000:.0f} ms after its instant")
