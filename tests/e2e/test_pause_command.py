"""`zcron pause` / `zcron resume` (spec §1, §6): cluster-wide and persistent. A paused job's
ticks are recorded `skipped` once each, by their owner, across restarts of every process
(a scheduler SIGKILLed, one that was down while the pause was given); a resumed job's next
ticks run, the skipped ones are not caught up. Keys that may not pause are refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq

from tests.harness import Cluster, Processes, make_cluster, metric_value, ops_client, wait_until
from zcron.protocol import encode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
JOBS = "# name: beat\n* * * * * *  -  echo beat\n# name: steady\n* * * * * *  -  true\n"
REASON = "paused by zcron pause at "


def zcron(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcron", *argv], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def start_scheduler(procs: Processes, cluster: Cluster, sid: str) -> subprocess.Popen:
    return procs.start("scheduler", "-c", str(cluster.config_path), "--id", sid, name=f"s-{sid}")


def beat_runs(cluster: Cluster) -> list[dict]:
    return [r for r in cluster.runs(job="beat", limit=10000) if r["attempt"] == 1]


def newest(cluster: Cluster, status: str, scheduler: str | None = None) -> float:
    ticks = [r["tick"] for r in beat_runs(cluster) if r["status"] == status
             and scheduler in (None, r["scheduler"])]  # fmt: skip
    return max(ticks, default=0.0)


def skipping(cluster: Cluster, after: float, scheduler: str | None = None) -> None:
    """Wait for a skipped tick of beat later than `after` (from `scheduler` if given)."""
    wait_until(lambda: newest(cluster, "skipped", scheduler) > after, 30,
               f"beat's ticks after {after:.0f} recorded skipped")  # fmt: skip


def paused_on(cluster: Cluster, sid: str) -> bool:
    out = zcron("status", "-c", str(cluster.config_path), "--json")
    view = json.loads(out.stdout)["schedulers"][sid] if out.stdout else {}
    return "beat" in view.get("paused", {})


@pytest.fixture
def three(tmp_path: Path, procs: Processes) -> Cluster:
    cluster = make_cluster(tmp_path, ("a", "b", "c"))
    (cluster.schedules / "jobs").write_text(JOBS)
    return cluster


def test_a_paused_job_stays_paused_across_every_restart_and_resumes(
    procs: Processes, three: Cluster
) -> None:
    cluster, config = three, str(three.config_path)
    sink = procs.start("sink", "-c", config)
    worker = procs.start("worker", "-c", config, "--id", "w1")
    scheds = {sid: start_scheduler(procs, cluster, sid) for sid in "ab"}  # c is down
    wait_until(lambda: newest(cluster, "ok") > 0, 30, "beat to run")
    out = zcron("pause", "-c", config, "beat")
    assert out.returncode == 0 and "beat paused" in out.stdout, out
    paused_at = time.time()
    skipping(cluster, paused_at + 1)
    wait_until(lambda: metric_value(cluster, "zcron_job_paused", job_name="beat") == 1, 15,
               "zcron_job_paused 1")  # fmt: skip
    assert metric_value(cluster, "zcron_job_paused", job_name="steady") == 0
    jobs = {j["job"]: j for j in cluster.get_json("/api/jobs")}
    assert jobs["beat"]["paused"] is True and jobs["steady"]["paused"] is False
    summary = {j["job"]: j["state"] for j in cluster.get_json("/api/summary")["jobs"]}
    assert summary["beat"] == "paused"

    # every process restarted, one at a time: SIGTERM, and a SIGKILL of one scheduler
    for sid, sig in (("a", signal.SIGTERM), ("b", signal.SIGKILL)):
        procs.stop(scheds[sid], sig)
        scheds[sid] = start_scheduler(procs, cluster, sid)
        wait_until(lambda s=sid: paused_on(cluster, s), 20, f"{sid} back, still paused")
        skipping(cluster, time.time() + 1)
    procs.stop(worker)
    worker = procs.start("worker", "-c", config, "--id", "w1")
    procs.stop(sink)
    sink = procs.start("sink", "-c", config)
    skipping(cluster, time.time() + 1)

    # c was down when the pause was given: it learns it from its peers, and keeps it alone
    scheds["c"] = start_scheduler(procs, cluster, "c")
    wait_until(lambda: paused_on(cluster, "c"), 20, "c to learn the pause")
    for sid in "ab":
        procs.stop(scheds[sid])
    skipping(cluster, time.time() + 1, scheduler="c")
    scheds["a"] = start_scheduler(procs, cluster, "a")
    wait_until(lambda: paused_on(cluster, "a"), 20, "a back, still paused")

    out = zcron("resume", "-c", config, "beat")
    assert out.returncode == 0 and "beat resumed" in out.stdout, out
    resumed_at = time.time()
    wait_until(lambda: newest(cluster, "ok") > resumed_at, 10, "beat to run again")
    assert newest(cluster, "ok") <= resumed_at + 3, "runs start within about two ticks"
    wait_until(lambda: metric_value(cluster, "zcron_job_paused", job_name="beat") == 0, 15,
               "zcron_job_paused 0")  # fmt: skip
    time.sleep(2)  # catch-up would come at once: ticks skipped while paused never run
    runs = beat_runs(cluster)
    first, last = paused_at + 1.5, resumed_at - 1.5
    per_tick = Counter(r["tick"] for r in runs if first <= r["tick"] <= last)
    ran = [r for r in runs if first <= r["tick"] <= last and r["status"] != "skipped"]
    assert not ran, f"paused ticks ran: {ran[:3]}"
    twice = {t: n for t, n in per_tick.items() if n > 1}
    assert not twice, f"ticks recorded more than once: {sorted(twice)[:5]}"
    expected = set(range(int(first) + 1, int(last) + 1))
    assert expected <= {int(t) for t in per_tick}, sorted(expected - set(map(int, per_tick)))
    skipped = next(r for r in runs if r["status"] == "skipped")
    assert skipped["stderr_tail"].startswith(REASON) and "(client cli)" in skipped["stderr_tail"]


def test_pause_errors_name_the_job_and_the_missing_schedulers(
    procs: Processes, cluster: Cluster
) -> None:
    (cluster.schedules / "jobs").write_text(JOBS)
    config = str(cluster.config_path)
    down = zcron("pause", "-c", config, "beat")
    assert down.returncode == 1 and "did not answer" in down.stderr, down
    procs.start("scheduler", "-c", config)
    wait_until(lambda: zcron("status", "-c", config).returncode == 0, 20, "the scheduler")
    unknown = zcron("pause", "-c", config, "no-such-job")
    assert unknown.returncode == 2 and "no job named 'no-such-job'" in unknown.stderr, unknown
    assert zcron("resume", "-c", config, "beat").returncode == 0
    assert "paused:" not in zcron("status", "-c", config).stdout
    assert zcron("pause", "-c", config, "beat").returncode == 0
    assert "paused: beat (since " in zcron("status", "-c", config).stdout


def test_only_client_keys_allowed_the_jobs_user_pause_it_and_forgeries_change_nothing(
    procs: Processes, cluster: Cluster
) -> None:
    (cluster.schedules / "jobs").write_text("# name: beat\n* * * * * *  root  true\n")
    ops, config = str(ops_client(cluster)), str(cluster.config_path)
    procs.start("sink", "-c", config)
    procs.start("scheduler", "-c", config)
    procs.start("worker", "-c", config, "--id", "w1")
    wait_until(lambda: newest(cluster, "ok") > 0, 30, "beat to run")
    refused = zcron("pause", "-c", ops, "beat")
    assert refused.returncode == 2 and "may not pause beat" in refused.stderr, refused
    before = status_counters(config)["rejected"]
    now = time.time()
    ctx = zmq.Context()
    try:
        sock = cluster.dealer(ctx, "a", as_key="w1")
        sock.send(encode("request", op="pause", args={"job": "beat"}))
        sock.send(encode("pauses", scheduler="w1", entries=[["beat", True, now, "w1"]]))
        sock.send(encode("pauses", scheduler="a", entries=[["beat", True, now, "w1"]]))
        sock.send(encode("pauses_request", scheduler="w1"))
        assert not sock.poll(1000), "the scheduler answered a worker key"
    finally:
        ctx.destroy(linger=0)
    wait_until(lambda: status_counters(config)["rejected"] >= before + 4, 10, "4 refusals counted")
    since = time.time()
    wait_until(lambda: newest(cluster, "ok") > since + 1, 15, "beat to keep running")
    assert newest(cluster, "skipped") == 0.0 and not paused_on(cluster, "a")


def status_counters(config: str) -> dict:
    out = zcron("status", "-c", config, "--json")
    return json.loads(out.stdout)["schedulers"]["a"]["counters"]
