"""The dashboard's decisions as plain functions of their inputs and a fixed `now`: job states,
run kinds, lateness from the right instant, the cluster panel and the job table's rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from zcron import dashboard
from zcron.http import Api, allowed_hosts, merge_jobs
from zcron.metrics import Metrics
from zcron.protocol import record
from zcron.sink import Reports
from zcron.store import Store

T0 = 1_796_000_040.0  # a whole minute
EVERY_SECOND = {"name": "beat", "schedule": "* * * * * *", "timezone": "UTC", "enabled": True}
DAILY = {"name": "daily", "schedule": "0 3 * * *", "timezone": "UTC", "enabled": True}


def last(tick: float, status: str = "ok", attempt: int = 1, **extra: object) -> dict:
    return {"status": status, "tick": tick, "attempt": attempt, "dispatched": tick + 0.001,
            "started": tick + 0.002, "finished": tick + 0.1, "exit_code": 0, **extra}  # fmt: skip


def test_a_per_second_job_with_no_run_for_a_few_seconds_is_late() -> None:
    ran = last(T0)
    assert dashboard.job_state(EVERY_SECOND, ran, T0 + 2, interval=1.0)[0] == "ok"
    state, reason = dashboard.job_state(EVERY_SECOND, ran, T0 + 1 + 3.5, interval=1.0)
    assert state == "late" and "due 4 s ago" in reason


def test_ticks_recorded_missed_do_not_hide_that_nothing_started() -> None:
    """With no worker, each tick is recorded missed as the next one comes (spec §8.13):
    the job is late from its last started run, not from its newest record."""
    missed = last(T0 + 4, "missed", started=None)
    job = {**EVERY_SECOND, "last_started": T0}
    assert dashboard.job_state(job, missed, T0 + 4.5, interval=1.0)[0] == "late"


def test_a_running_job_is_not_late_and_a_daily_job_gets_a_longer_grace() -> None:
    assert dashboard.job_state(EVERY_SECOND, last(T0), T0 + 60, running=True)[0] == "ok"
    ran = last(T0 - 86400 + 3 * 3600 - T0 % 86400)  # yesterday 03:00
    due = ran["tick"] + 86400
    assert dashboard.job_state(DAILY, ran, due + 300, interval=86400.0)[0] == "ok"
    assert dashboard.job_state(DAILY, ran, due + 601, interval=86400.0)[0] == "late"


def test_a_job_that_never_ran_is_late_from_when_the_sink_first_saw_it() -> None:
    assert dashboard.job_state(EVERY_SECOND, None, T0 + 2, first_seen=T0)[1] == "no run yet"
    assert dashboard.job_state(EVERY_SECOND, None, T0 + 5, first_seen=T0)[0] == "late"
    assert dashboard.job_state(EVERY_SECOND, None, T0 + 5)[0] == "ok", "nothing expected yet"


def test_failing_disabled_and_paused_states_say_why() -> None:
    failed = last(T0, "failed", exit_code=3)
    assert dashboard.job_state(EVERY_SECOND, failed, T0 + 0.5) == (
        "failing", "last run failed (exit 3)",
    )  # fmt: skip
    missed = last(T0, "missed", started=None, exit_code=None)
    assert dashboard.job_state(DAILY, missed, T0 + 1)[1].startswith("last tick missed")
    disabled = {**EVERY_SECOND, "enabled": False}
    assert dashboard.job_state(disabled, failed, T0 + 99)[0] == "disabled"
    assert dashboard.job_state({**EVERY_SECOND, "paused": True}, None, T0 + 99)[0] == "paused"
    skipped = last(T0, "skipped")
    assert dashboard.job_state(EVERY_SECOND, skipped, T0 + 0.5)[0] == "ok"


def test_run_kinds_retry_manual_catch_up_and_scheduled() -> None:
    assert dashboard.run_kind(last(T0), DAILY | {"schedule": "* * * * *"}) == "scheduled"
    assert dashboard.run_kind(last(T0, attempt=2), EVERY_SECOND) == "retry"
    assert dashboard.run_kind(last(T0 + 12.345), DAILY) == "manual"
    assert dashboard.run_kind(last(T0, dispatched=T0 + 30), EVERY_SECOND) == "catch-up"


def test_lateness_skips_retries_and_the_summary_skips_catch_up_manual_and_pushes() -> None:
    assert dashboard.lateness_s(last(T0, attempt=2, started=T0 + 30)) is None
    assert dashboard.lateness_s(last(T0)) == pytest.approx(0.002, abs=1e-6)
    jobs = {"beat": EVERY_SECOND}
    records = [
        {"job": "beat", **last(T0)},
        {"job": "beat", **last(T0 + 1, dispatched=T0 + 40, started=T0 + 40)},  # catch-up
        {"job": "beat", **last(T0 + 2.5, started=T0 + 9)},  # manual
        {"job": "push:abc", **last(T0, started=T0 + 50)},
    ]
    summary = dashboard.lateness_summary(records, jobs)
    assert summary["runs"] == 1 and summary["worst_job"] == "beat"
    assert summary["p99"] == pytest.approx(0.002, abs=1e-6)


def test_removed_jobs_and_pushes_leave_the_table_and_dead_tables_stand_in() -> None:
    live = {"scheduler": "a", "seen": 9.0, "live": True, "jobs": [{"name": "kept"}]}
    dead = {"scheduler": "b", "seen": 1.0, "live": False, "jobs": [{"name": "old"}]}
    last_runs = {"kept": {"last_run": None, "last_success": 1.0},
                 "removed": {"last_run": None, "last_success": 2.0},
                 "push:1234": {"last_run": None, "last_success": 3.0}}  # fmt: skip
    assert [r["job"] for r in merge_jobs([live, dead], last_runs)] == ["kept"]
    assert [r["job"] for r in merge_jobs([dead], last_runs)] == ["old"], "all down: last known"


def test_cluster_panel_names_dead_and_not_firing_schedulers_and_empty_pools() -> None:
    reports = [
        {"scheduler": "a", "live": True, "seen": 100.0, "stats": {"eligible": 1}, "jobs": []},
        {"scheduler": "b", "live": True, "seen": 100.0, "stats": {"eligible": 0},
         "reason": "clock off by +3.000s from peers (max 1s)", "jobs": []},
        {"scheduler": "c", "live": False, "seen": 80.0, "stats": {}, "jobs": []},
    ]  # fmt: skip
    panel = {row["id"]: row for row in dashboard.scheduler_panel(reports, {"a", "d"}, 100.0)}
    assert panel["a"]["firing"] and panel["a"]["state"] == "live"
    assert not panel["b"]["firing"] and panel["b"]["reason"].startswith("clock off")
    assert panel["c"] == panel["c"] | {"state": "dead", "reason": "silent for 20 s"}
    assert panel["d"]["reason"] == "never reported"
    workers = [{"worker": "w1", "pools": ["default"], "slots": 4, "free": 1, "running": ["r"]}]
    pools = dashboard.worker_panel(workers, {"default", "gpu"})
    assert pools == {"default": [{"id": "w1", "slots": 4, "free": 1, "running": 1}], "gpu": []}


def test_schedule_errors_count_files_not_lines() -> None:
    errors = ["/etc/zcron.d/a:2: bad hour", "/etc/zcron.d/a:5: bad minute", "/x/b:1: bad"]
    assert dashboard.schedule_error_files(errors) == 2
    reports = [{"scheduler": "a", "live": True, "errors": errors[:1]},
               {"scheduler": "b", "live": True, "errors": errors[:1]}]  # fmt: skip
    assert dashboard.schedule_errors(reports) == [{"error": errors[0], "schedulers": ["a", "b"]}]


def test_absurd_times_neither_break_states_nor_strips() -> None:
    for tick in (1e300, -1e300, 0.0):
        assert dashboard.job_state(EVERY_SECOND, last(tick), T0)[0] in ("ok", "late")
        assert dashboard.run_kind(last(tick), EVERY_SECOND) in ("manual", "scheduled")
    marks = dashboard.strips([{"job": "push:x", **last(T0)}], {})
    assert list(marks) == ["push"]


def test_http_answers_its_address_localhost_and_configured_names_only() -> None:
    hosts = allowed_hosts("0.0.0.0", 9464, ["Sink.Example.org"])
    for host in ("0.0.0.0:9464", "localhost:9464", "127.0.0.1:9464", "[::1]:9464",
                 "sink.example.org", "sink.example.org:9464"):  # fmt: skip
        assert host in hosts, host
    for host in ("localhost", "localhost:80", "evil.example:9464", "", "127.0.0.1"):
        assert host not in hosts, host
    assert "[::]:9464" in allowed_hosts("::", 9464, [])


def test_summary_of_records_with_absurd_times_is_still_json(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "sink"))
    reports = Reports(configured=["a"])
    reports.note_jobs({"scheduler": "a", "sent": 1.0, "jobs": [EVERY_SECOND]}, now=time.monotonic())
    odd = record(run_id="r1", job="beat", tick=1e300, started=1e300, finished=-1e300, status="ok")
    store.put_many([odd, record(run_id="r2", job="push:x", tick=4e10, status="missed")])
    try:
        summary = Api(store, Metrics(), reports).summary()
        json.dumps(summary, allow_nan=False)
        assert [(j["job"], j["state"]) for j in summary["jobs"]] == [("beat", "ok")]
    finally:
        store.close()
