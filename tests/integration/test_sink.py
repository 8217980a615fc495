"""A real sink process on loopback: results acked after commit, HTTP API, metrics, restarts."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Cluster, Processes, make_cluster, wait_until
from zcron.errors import ProtocolError
from zcron.http import Api, HttpServer, merge_jobs
from zcron.metrics import Metrics
from zcron.protocol import decode, encode, record
from zcron.sink import PURGE_BATCH, Reports, check_job_entry
from zcron.spool import MAX_RESEND_AFTER_S, RESEND_AFTER_S, Spool
from zcron.store import Store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # closes the sockets a test left open


def start_sink(procs: Processes, cluster: Cluster) -> subprocess.Popen:
    """Start `zcron sink` and wait until its HTTP side answers."""
    proc = procs.start("sink", "-c", str(cluster.config_path))
    wait_until(lambda: answers(cluster) or proc.poll() is not None, 10, "sink HTTP")
    assert proc.poll() is None, procs.log(proc)
    return proc


def answers(cluster: Cluster) -> bool:
    try:
        cluster.get_json("/api/jobs")
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def connect(
    ctx: zmq.Context, cluster: Cluster, identity: str = "w1", key: str | None = None
) -> zmq.Socket:
    """A connection to the sink as `identity`, with key `key` (default: worker `identity`)."""
    return cluster.dealer(ctx, "sink", as_key=key or identity, identity=identity)


def run_record(n: int, job: str = "backup", status: str = "ok", base: float = 0.0) -> dict:
    tick = (base or time.time() - 500) + n  # within the 10-minute strips, never ahead
    return record(
        run_id=f"{job}-{n}",
        job=job,
        tick=tick,
        scheduler="a",
        worker="w1",
        dispatched=tick + 0.0004,
        started=tick + 0.0011,
        finished=tick + 0.0153,
        exit_code=0 if status == "ok" else 1,
        status=status,
    )


def acked(sock: zmq.Socket, want: set[str], timeout: float = 5.0) -> set[str]:
    """Collect acked run ids until `want` is covered or the timeout passes."""
    got: set[str] = set()
    deadline = time.monotonic() + timeout
    while not want <= got and sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        kind, fields = decode(sock.recv())
        assert kind == "ack"
        got |= set(fields["run_ids"])
    return got


def deliver(sock: zmq.Socket, records: list[dict]) -> None:
    for rec in records:
        sock.send(encode("result", record=rec))
    want = {rec["run_id"] for rec in records}
    assert acked(sock, want) >= want


def metric_samples(cluster: Cluster) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(cluster.http + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def http_error(cluster: Cluster, path: str) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as info:
        cluster.get_json(path)
    return info.value.code, json.loads(info.value.read())


def test_results_are_acked_and_listed_newest_first(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    base = time.time() - 100
    records = [run_record(n, base=base) for n in (3, 1, 2)]
    records += [run_record(4, job="report", status="failed", base=base)]
    deliver(sock, records)
    assert [r["run_id"] for r in cluster.runs()] == ["report-4", "backup-3", "backup-2", "backup-1"]
    assert cluster.runs()[1] == records[0]
    assert [r["run_id"] for r in cluster.runs(job="backup", limit=2)] == ["backup-3", "backup-2"]
    assert [r["run_id"] for r in cluster.runs(status="failed")] == ["report-4"]
    since, until = base + 1.5, base + 3.5
    assert [r["run_id"] for r in cluster.runs(since=since, until=until)] == ["backup-3", "backup-2"]
    assert cluster.runs(since="2100-01-01T00:00:00Z") == []


def test_resent_record_is_acked_again_and_stored_once(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    rec = run_record(1)
    deliver(sock, [rec])
    deliver(sock, [rec])
    assert len(cluster.runs()) == 1
    got = metric_samples(cluster)
    assert got[("zcron_runs_total", (("job_name", "backup"), ("status", "ok")))] == 1
    assert got[("zcron_sink_records", ())] == 1


def test_garbage_is_counted_and_the_sink_keeps_serving(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    good = encode("result", record=run_record(1))
    sock.send(b"\xc1 not msgpack")
    sock.send(good[:-5])
    sock.send(msgpack.packb({"v": 1, "t": "launch-missiles"}))
    sock.send_multipart([b"", good])
    sock.send(encode("ack", run_ids=["x"]))
    sock.send(encode("result", record={**run_record(2), "status": "great"}))
    sock.send(encode("result", record={**run_record(4), "finished": float("nan")}))
    deliver(sock, [run_record(3)])
    got = metric_samples(cluster)

    def rejected(reason: str) -> float:
        return got.get(("zcron_rejected_messages_total", (("reason", reason),)), 0)

    assert rejected("malformed") == 3
    assert rejected("unknown_type") == 1
    assert rejected("unexpected_type") == 1
    assert rejected("bad_field") == 2
    assert [r["run_id"] for r in cluster.runs()] == ["backup-3"]


def test_a_turns_results_are_stored_together_and_a_bad_record_is_dropped_alone(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    """`results` (a loop turn's records in one message): each record is checked alone, so a
    bad one is dropped and counted while the good ones beside it are stored and acked."""
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    good = [run_record(n) for n in (1, 2, 3)]
    bad = [{**run_record(4), "status": "great"}, {**run_record(5), "finished": float("inf")},
           {**run_record(6), "attempt": 0}, "not a map"]  # fmt: skip
    sock.send(encode("results", records=[good[0], bad[0], good[1], bad[1], bad[2], good[2]]))
    sock.send(encode("results", records=[bad[3]]))  # not a map: the whole message is bad
    sock.send(encode("results", records=[run_record(n) for n in range(100, 200)]))  # > 64
    assert acked(sock, {r["run_id"] for r in good}) >= {r["run_id"] for r in good}
    got = metric_samples(cluster)

    def rejected(reason: str) -> float:
        return got.get(("zcron_rejected_messages_total", (("reason", reason),)), 0)

    # three bad records alone, the message with a non-map; 100 records: too many for one
    assert (rejected("bad_field"), rejected("too_large")) == (4, 1)
    assert sorted(r["run_id"] for r in cluster.runs()) == sorted(r["run_id"] for r in good)


def test_bad_parameters_are_400_with_a_message(procs: Processes, cluster: Cluster) -> None:
    start_sink(procs, cluster)
    assert http_error(cluster, "/api/runs?limit=x") == (
        400,
        {"error": "limit: expected a whole number 1..10000, got 'x'"},
    )
    code, body = http_error(cluster, "/api/runs?status=fine")
    assert code == 400 and body["error"].startswith("status: expected one of ok, failed")
    code, body = http_error(cluster, "/api/runs?since=yesterday")
    assert code == 400 and "since" in body["error"]
    assert http_error(cluster, "/api/nothing")[0] == 404


def zcron_runs(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zcron", "runs", "-c", str(cluster.config_path), *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_zcron_runs_reads_the_api_with_job_and_since(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    old = time.time() - 7200
    deliver(sock, [run_record(1, base=old), run_record(2), run_record(3, job="report")])
    listed = zcron_runs(cluster, "backup", "--since", "1h", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["run_id"] for line in listed.stdout.splitlines()] == ["backup-2"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old - 60))
    header, *lines = zcron_runs(cluster, "--since", iso, "--limit", "2").stdout.splitlines()
    assert header.split()[:2] == ["TICK", "(UTC)"] and header.split()[-1] == "RUN"
    assert [line.split()[-1] for line in lines] == ["report-3", "backup-2"]
    assert " ok " in lines[0] and " report " in lines[0]
    # --status is the API's status= filter (every record here is ok)
    assert len(zcron_runs(cluster, "--status", "ok", "--json").stdout.splitlines()) == 3
    assert zcron_runs(cluster, "--status", "failed", "--json").stdout == ""
    assert zcron_runs(cluster, "--status", "fine").returncode == 2
    bad = zcron_runs(cluster, "--limit", "20000")
    assert bad.returncode == 2 and "limit: expected a whole number 1..10000" in bad.stderr
    assert zcron_runs(cluster, "--since", "soon").returncode == 2


def test_zcron_runs_without_a_sink_names_the_endpoint(cluster: Cluster) -> None:
    failed = zcron_runs(cluster)
    assert failed.returncode == 1 and f"127.0.0.1:{cluster.http_port}/api/runs" in failed.stderr


def test_metrics_show_runs_lateness_and_slots(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    sock.send(
        encode("ready", worker="w1", pools=["default"], slots=4, free=3, seen=1, running=["x"])
    )
    deliver(sock, [run_record(1), run_record(2, job="nightly", status="missed")])
    free = ("zcron_worker_slots", (("pool", "default"), ("state", "free")))
    got = wait_until(lambda: (s := metric_samples(cluster)).get(free) == 3 and s, 5, "slots")
    assert got[("zcron_runs_total", (("job_name", "backup"), ("status", "ok")))] == 1
    assert got[("zcron_missed_ticks_total", (("job_name", "nightly"),))] == 1
    assert got[("zcron_dispatch_lateness_seconds_bucket", (("le", "0.002"),))] == 2
    assert got[("zcron_worker_slots", (("pool", "default"), ("state", "busy")))] == 1
    assert got[("zcron_job_last_success_timestamp_seconds", (("job_name", "backup"),))] > 0
    assert got[("zcron_schedulers", (("state", "dead"),))] == 1


def test_jobs_report_shows_in_api_jobs(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    start_sink(procs, cluster)
    sock = connect(ctx, cluster, identity="scheduler-a", key="a")
    next_tick = time.time() + 60
    job = {
        "name": "backup",
        "schedule": "0 3 * * *",
        "timezone": "UTC",
        "pool": "default",
        "enabled": True,
        "source": "etc/zcron.d/backup.toml:1",
        "next_tick": next_tick,
    }
    errors = [f"{cluster.root}/zcron.d/broken:2: bad hour field '25'"]
    sock.send(encode("jobs", scheduler="a", jobs=[job], sent=time.time(), errors=errors))
    deliver(sock, [run_record(1), run_record(2, job="removed"), run_record(3, job="push:ab12")])

    def backup_ran() -> list[dict] | None:
        jobs = cluster.get_json("/api/jobs")
        return jobs if jobs and jobs[0]["last_run"] else None

    jobs = wait_until(backup_ran, 5, "backup's run in /api/jobs")
    assert [j["job"] for j in jobs] == ["backup"], "a removed job and a push are not listed"
    backup = jobs[0]
    assert backup["job"] == "backup" and backup["schedule"] == "0 3 * * *"
    assert backup["next_tick"] == next_tick and backup["schedulers"] == ["a"]
    assert backup["last_run"]["status"] == "ok" and backup["last_success"] is not None
    summary = cluster.get_json("/api/summary")
    assert summary["errors"] == [{"error": errors[0], "schedulers": ["a"]}]
    assert [(s["id"], s["state"]) for s in summary["schedulers"]] == [("a", "live")]
    assert set(summary["strips"]) == {"backup", "removed", "push"}
    missed = ("zcron_missed_ticks_total", (("job_name", "backup"),))
    got = wait_until(lambda: (m := metric_samples(cluster)).get(missed) == 0 and m, 5, "0 series")
    assert got[("zcron_schedule_errors", (("scheduler", "a"),))] == 1
    assert got[("zcron_runs_total", (("job_name", "push"), ("status", "ok")))] == 1
    assert got[("zcron_duplicate_runs_total", (("job_name", "backup"),))] == 0
    assert got[("zcron_runs_total", (("job_name", "backup"), ("status", "failed")))] == 0
    assert not any("push:" in str(labels) for _, labels in got), "pushes share job_name=push"
    live = ("zcron_schedulers", (("state", "live"),))
    wait_until(lambda: metric_samples(cluster).get(live) == 1, 5, "scheduler a live")


def test_sigterm_stops_cleanly(procs: Processes, cluster: Cluster) -> None:
    proc = start_sink(procs, cluster)
    assert procs.stop(proc, signal.SIGTERM) == 0
    assert "dashboard http://127.0.0.1:" in procs.log(proc)


def test_acked_records_survive_sigkill(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    proc = start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    records = [run_record(n) for n in range(200)]
    deliver(sock, records)
    procs.stop(proc, signal.SIGKILL)
    start_sink(procs, cluster)
    assert len(cluster.runs(limit=1000)) == 200
    got = metric_samples(cluster)
    assert got[("zcron_sink_records", ())] == 200
    last = records[-1]["finished"]
    assert got[("zcron_job_last_success_timestamp_seconds", (("job_name", "backup"),))] == last


def test_dashboard_is_served_as_html(procs: Processes, cluster: Cluster) -> None:
    start_sink(procs, cluster)
    with urllib.request.urlopen(cluster.http + "/", timeout=5) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    assert "<title>zcron dashboard</title>" in page
    assert "http://" not in page and "https://" not in page
    assert "<script>" not in page and "<style>" not in page, "the CSP allows no inline code"


def request(cluster: Cluster, path: str, host: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one GET with an optional Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def test_http_answers_known_hosts_only_with_nosniff_and_a_csp(
    procs: Processes, cluster: Cluster
) -> None:
    cluster.extra = 'http_hosts = ["zcron.example.org"]\n'
    cluster.write_config()
    start_sink(procs, cluster)
    port = cluster.http_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "zcron.example.org"):
        assert request(cluster, "/api/jobs", host)[0] == 200, host
    for host in ("evil.example.com", f"evil.example.com:{port}", "localhost:1", ""):
        assert request(cluster, "/api/jobs", host)[0] == 421, host
    for path in ("/", "/app.js", "/app.css", "/api/summary", "/metrics", "/nope"):
        status, headers, _ = request(cluster, path)
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert "script-src 'self'" in headers["Content-Security-Policy"], path
    assert request(cluster, "/app.js")[1]["Content-Type"].startswith("text/javascript")


def test_http_refuses_connections_beyond_the_limit_at_once(
    procs: Processes, cluster: Cluster
) -> None:
    start_sink(procs, cluster)
    idle = [socket.create_connection(("127.0.0.1", cluster.http_port)) for _ in range(40)]
    try:
        refused = wait_until(lambda: request_or_busy(cluster), 5, "a quick 503")
        assert refused == 503
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: request_or_busy(cluster) == 200, 15, "serving again")


def request_or_busy(cluster: Cluster) -> int | None:
    try:
        return request(cluster, "/api/jobs")[0]
    except (OSError, http.client.HTTPException):
        return None


def test_a_filter_matching_nothing_is_empty_and_complete_below_the_cap(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    deliver(sock, [run_record(n) for n in range(30)])
    status, headers, body = request(cluster, "/api/runs?status=refused&limit=5")
    assert status == 200 and json.loads(body) == [] and "X-Zcron-Truncated" not in headers


def test_records_past_retention_are_purged(
    procs: Processes, tmp_path: Path, ctx: zmq.Context
) -> None:
    cluster = make_cluster(tmp_path, extra='retention = "1h"\n')
    store = Store(str(cluster.root / "sink"))
    store.put_many([run_record(1, base=time.time() - 7200)])  # stored while it was young
    store.close()
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    deliver(sock, [run_record(2)])
    records = ("zcron_sink_records", ())
    wait_until(lambda: metric_samples(cluster)[records] == 1, 10, "the old record purged")
    assert [r["run_id"] for r in cluster.runs()] == ["backup-2"]
    # A record already past retention is refused at the door, never stored (spec §7).
    sock.send(encode("result", record=run_record(3, base=time.time() - 7200)))
    assert not sock.poll(500), "a record older than retention was acked"
    assert metric_samples(cluster)[records] == 1


def test_retention_purges_in_steps_while_results_keep_being_acked(
    procs: Processes, tmp_path: Path, ctx: zmq.Context
) -> None:
    cluster = make_cluster(tmp_path, extra='retention = "1h"\n')
    old = 20 * PURGE_BATCH
    store = Store(str(cluster.root / "sink"))
    base = time.time() - 7200 - old
    for start in range(0, old, 1000):
        store.put_many(run_record(n, job="old", base=base) for n in range(start, start + 1000))
    store.close()
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    records = ("zcron_sink_records", ())
    seen, slowest, n = [], 0.0, 0
    while not seen or seen[-1] > n:  # until every old record is gone
        began = time.monotonic()
        deliver(sock, [run_record(n := n + 1)])
        slowest = max(slowest, time.monotonic() - began)
        seen.append(metric_samples(cluster)[records])
    assert any(n < count < old for count in seen), f"purged in one go: {seen}"
    assert slowest < 1.0, f"an ack waited {slowest:.3f}s behind the purge"
    assert [r["job"] for r in cluster.runs(limit=10000)] == ["backup"] * n


CLUSTER_JOBS = """\
# name: fine
* * * * * *  -  true
# name: broken
* * * * * *  -  exit 1
"""
NO_WORKER_JOB = """\
[unplaced]
schedule = "* * * * * *"
command = "true"
pool = "gpu"
misfire_grace = "1s"
"""


def cluster_metrics_cover(got: dict) -> bool:
    """Every spec §6 series a live cluster should have produced by now."""
    want = [
        ("zcron_runs_total", (("job_name", "fine"), ("status", "ok"))),
        ("zcron_runs_total", (("job_name", "broken"), ("status", "failed"))),
        ("zcron_runs_total", (("job_name", "unplaced"), ("status", "missed"))),
        ("zcron_missed_ticks_total", (("job_name", "unplaced"),)),
        ("zcron_job_last_success_timestamp_seconds", (("job_name", "fine"),)),
        ("zcron_worker_slots", (("pool", "default"), ("state", "free"))),
        ("zcron_dispatch_lateness_seconds_count", ()),
        ("zcron_run_duration_seconds_count", ()),
        ("zcron_sink_ingest_lag_seconds_count", ()),
    ]
    live = got.get(("zcron_schedulers", (("state", "live"),)))
    return all(got.get(key, 0) > 0 for key in want) and live == 1


def test_metrics_of_a_live_cluster_then_without_job_labels(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    (cluster.schedules / "jobs").write_text(CLUSTER_JOBS)
    (cluster.schedules / "unplaced.toml").write_text(NO_WORKER_JOB)
    sink = start_sink(procs, cluster)
    procs.start("scheduler", "-c", str(cluster.config_path))
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    got = wait_until(
        lambda: cluster_metrics_cover(s := metric_samples(cluster)) and s, 20, "every series"
    )
    slots = [
        got.get(("zcron_worker_slots", (("pool", "default"), ("state", st))), 0)
        for st in ("busy", "free")
    ]
    assert sum(slots) == 8
    for histogram in ("dispatch_lateness", "run_duration", "sink_ingest_lag"):
        assert (f"zcron_{histogram}_seconds_bucket", (("le", "0.0005"),)) in got, histogram
    assert got[("zcron_schedulers", (("state", "dead"),))] == 0

    # A second first attempt of a tick that ran (as a partitioned peer would fire it),
    # and a hostile frame: counted, not stored as a run twice, not fatal.
    ran = next(r for r in cluster.runs(job="fine") if r["attempt"] == 1)
    sock = connect(ctx, cluster, identity="w1-again", key="w1")
    sock.send(b"\x93garbage")
    deliver(sock, [{**ran, "run_id": "from-b", "scheduler": "b"}])
    got = metric_samples(cluster)
    assert got[("zcron_duplicate_runs_total", (("job_name", "fine"),))] == 1
    assert got[("zcron_rejected_messages_total", (("reason", "malformed"),))] == 1
    stored = len(cluster.runs(limit=10000))
    assert stored - 2 <= got[("zcron_sink_records", ())] <= stored + 2  # runs keep arriving

    procs.stop(sink, signal.SIGKILL)
    cluster.extra = "job_labels = false\n"
    cluster.write_config()
    start_sink(procs, cluster)
    ok = ("zcron_runs_total", (("status", "ok"),))
    got = wait_until(lambda: (s := metric_samples(cluster)).get(ok) and s, 10, "unlabelled runs")
    assert not any(dict(labels).get("job_name") for _, labels in got), "job_name still present"
    assert got[("zcron_job_last_success_timestamp_seconds", ())] >= ran["finished"]


def test_silent_schedulers_count_dead_and_silent_workers_vanish() -> None:
    reports = Reports(configured=["a", "b"])
    reports.note_jobs({"scheduler": "a", "sent": 1.0, "jobs": [{"name": "j"}]}, now=100.0)
    reports.note_worker(
        {"worker": "w", "pools": ["db", "db"], "slots": 4, "free": 1, "seen": 0, "running": []},
        now=100.0,
    )
    assert reports.scheduler_states(now=109.0) == (1, 1)
    assert reports.slots() == ({("db", "busy"): 3, ("db", "free"): 1}, 1)
    reports.expire(now=106.0)
    assert reports.slots() == ({}, 0)
    assert reports.scheduler_states(now=111.0) == (0, 2)
    assert [r["live"] for r in reports.snapshot(now=111.0)] == [False]


def test_jobs_entry_without_a_name_is_rejected_and_odd_fields_are_dropped() -> None:
    with pytest.raises(ProtocolError):
        check_job_entry({"schedule": "* * * * *"})
    entry = check_job_entry({"name": "j", "next_tick": True, "pool": ["x"], "extra": 1})
    assert entry["next_tick"] is None and entry["pool"] is None and "extra" not in entry


def test_api_jobs_prefers_live_reports_and_leaves_out_store_only_jobs() -> None:
    reports = [
        {"scheduler": "b", "seen": 5.0, "live": False, "jobs": [{"name": "j", "schedule": "old"}]},
        {"scheduler": "a", "seen": 1.0, "live": True, "jobs": [{"name": "j", "schedule": "new"}]},
    ]
    last = {
        "j": {"last_run": None, "last_success": 2.0},
        "k": {"last_run": None, "last_success": 3.0},
    }
    rows = merge_jobs(reports, last)
    assert [(r["job"], r["schedule"], r["schedulers"]) for r in rows] == [("j", "new", ["a"])]
    assert rows[0]["last_success"] == 2.0


def test_spool_resends_less_often_while_the_sink_is_silent_and_promptly_once_it_acks(
    tmp_path: Path,
) -> None:
    spool = Spool(str(tmp_path))
    for n in (1, 2):
        spool.add(run_record(n))
    resent_at = [t for t in range(0, 200) if spool.due(float(t))]
    gaps = [b - a for a, b in zip(resent_at, resent_at[1:], strict=False)]
    assert gaps[0] == RESEND_AFTER_S and max(gaps) == MAX_RESEND_AFTER_S
    assert gaps == sorted(gaps)
    spool.ack(["backup-1"])
    now = resent_at[-1] + RESEND_AFTER_S
    assert [r["run_id"] for r in spool.due(now)] == ["backup-2"]


def test_a_scan_cut_at_max_examined_is_said_in_the_answer(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "sink"))
    store.put_many(
        [record(run_id=f"r{n}", job="beat", tick=time.time() - 100 + n) for n in range(20)]
    )
    store.max_examined = 5
    server = HttpServer("127.0.0.1:0", Api(store, Metrics(), Reports()))
    server.start()
    try:
        with urllib.request.urlopen(server.url + "/api/runs?status=refused", timeout=5) as answer:
            assert json.loads(answer.read()) == []
            assert answer.headers["X-Zcron-Truncated"] == "examined 5 records"
    finally:
        server.stop()
        store.close()


def test_duplicates_stay_counted_and_a_lost_guess_gives_way_across_sink_restarts(
    procs: Processes, cluster: Cluster, ctx: zmq.Context
) -> None:
    sink = start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    first, second = run_record(1), run_record(2)
    lost = {**second, "status": "lost", "started": None, "finished": None}
    deliver(sock, [first, {**first, "run_id": "twin"}, lost])
    dup = ("zcron_duplicate_runs_total", (("job_name", "backup"),))
    assert metric_samples(cluster)[dup] == 1
    procs.stop(sink, signal.SIGKILL)
    start_sink(procs, cluster)
    sock = connect(ctx, cluster)
    assert metric_samples(cluster)[dup] == 1  # counted since the store was created
    deliver(sock, [second])  # the worker ran it after all: its record is the truth
    assert [r["status"] for r in cluster.runs(job="backup") if r["run_id"] == "backup-2"] == ["ok"]
    assert metric_samples(cluster)[dup] == 1
