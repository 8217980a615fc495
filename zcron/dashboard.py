"""What the dashboard shows, computed on the sink: each job's state, each run's kind, the
cluster panel, schedule errors and the per-job strips (spec §6).

Plain functions of the job table, the store's rows and `now`, so they are unit-tested
without sockets; http.py only gathers their inputs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache

from zcron.cron import CronSchedule, parse_schedule

PUSH_PREFIX = "push:"  # one-off pushes: no row of their own, one metric label for all
FAILING = ("failed", "timeout", "killed", "lost", "refused", "missed")
# A job is late once its expected tick plus this grace has passed with no run started:
# a tenth of its interval, at least a few seconds (ingest delay), at most ten minutes.
LATE_MIN_GRACE_S = 3.0
LATE_MAX_GRACE_S = 600.0
LATE_GRACE_SHARE = 0.1
CATCH_UP_S = 1.0  # a first attempt dispatched this long after its tick was caught up
STRIP_WINDOW_S = 600.0
STRIP_MARKS = 120  # per job: the newest marks of the window
_ERROR_FILE = re.compile(r"^(.*?):\d+: ")


def is_push(job: str) -> bool:
    """A one-off `zcron push` run (its job name is push:<id>)."""
    return job.startswith(PUSH_PREFIX)


@lru_cache(maxsize=4096)
def _cron(schedule: str, timezone: str) -> CronSchedule | None:
    try:
        return parse_schedule(schedule, timezone)
    except ValueError:
        return None


def job_cron(job: dict) -> CronSchedule | None:
    """The job's parsed schedule (cached per schedule and zone), None if it has none."""
    if not job.get("schedule"):
        return None
    return _cron(job["schedule"], job.get("timezone") or "UTC")


def late_grace(interval: float | None) -> float:
    """How long after its expected tick a job with no started run counts as late."""
    if interval is None:
        return LATE_MIN_GRACE_S
    return min(LATE_MAX_GRACE_S, max(LATE_MIN_GRACE_S, interval * LATE_GRACE_SHARE))


def expected_tick(job: dict, last: dict | None, first_seen: float | None) -> float | None:
    """The first fire instant after the job's last recorded tick (or after the sink first
    saw the job, if it never ran): the run that should have started next."""
    cron = job_cron(job)
    if "last_started" in job:  # the store's word: ticks recorded missed never started
        anchor = job["last_started"] if job["last_started"] is not None else first_seen
    else:
        anchor = last["tick"] if last and last.get("tick") is not None else first_seen
    if cron is None or anchor is None:
        return None
    return cron.next_after(anchor)


def job_state(
    job: dict,
    last: dict | None,
    now: float,
    running: bool = False,
    first_seen: float | None = None,
    interval: float | None = None,
) -> tuple[str, str]:
    """(state, reason): disabled, paused, late, failing or ok, the first that applies."""
    if job.get("enabled") is False:
        return "disabled", "disabled in its schedule file"
    if job.get("paused"):
        return "paused", "paused with zcron pause: its ticks are skipped until zcron resume"
    expected = None if running else expected_tick(job, last, first_seen)
    if expected is not None and now > expected + late_grace(interval):
        return "late", f"no run started for the tick due {now - expected:.0f} s ago"
    if last and last.get("status") in FAILING:
        return "failing", failure_reason(last)
    if running:
        return "ok", "running"
    return "ok", "" if last else "no run yet"


def failure_reason(last: dict) -> str:
    """`last run failed (exit 3)` and the like."""
    status = last["status"]
    if last.get("exit_code") is not None:
        return f"last run {status} (exit {last['exit_code']})"
    return f"last run {status}" if status != "missed" else "last tick missed: no worker started it"


def run_kind(rec: dict, job: dict | None) -> str:
    """retry, manual (a tick off the schedule), catch-up (dispatched late) or scheduled."""
    if rec.get("attempt", 1) > 1:
        return "retry"
    tick = rec.get("tick")
    cron = job_cron(job) if job else None
    if cron is not None and tick is not None and not on_schedule(cron, tick):
        return "manual"
    dispatched = rec.get("dispatched")
    if tick is not None and dispatched is not None and dispatched - tick > CATCH_UP_S:
        return "catch-up"
    return "scheduled"


def on_schedule(cron: CronSchedule, tick: float) -> bool:
    """Whether tick is one of the schedule's fire instants (to the millisecond)."""
    try:
        fire = cron.next_after(tick - 0.001)
    except (OverflowError, ValueError):
        return False
    return fire is not None and abs(fire - tick) < 0.001


def lateness_s(rec: dict) -> float | None:
    """Started minus the instant it was due (tick plus jitter delay) for first attempts;
    a retry waits its retry_delay on purpose."""
    if rec.get("attempt", 1) != 1 or rec.get("started") is None or rec.get("tick") is None:
        return None
    return max(0.0, rec["started"] - rec["tick"] - (rec.get("delay") or 0.0))


def lateness_summary(records: list[dict], jobs: dict[str, dict]) -> dict:
    """p50, p99 and the latest job over scheduled first attempts (not catch-up, not manual,
    not pushes: a push's tick is when it was asked for, not a schedule's)."""
    values = sorted(
        (late, rec["job"])
        for rec in records
        if (late := lateness_s(rec)) is not None
        and rec["job"] in jobs
        and run_kind(rec, jobs[rec["job"]]) == "scheduled"
    )
    if not values:
        return {"p50": None, "p99": None, "worst": None, "worst_job": None, "runs": 0}
    pick = lambda p: values[min(len(values) - 1, int(p * len(values)))][0]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "worst": values[-1][0],
            "worst_job": values[-1][1], "runs": len(values)}  # fmt: skip


def strips(records: list[dict], jobs: dict[str, dict]) -> dict[str, list[list]]:
    """Per job, its newest runs of the window as [time, status, kind] marks."""
    marks: dict[str, list[list]] = defaultdict(list)
    for rec in records:  # newest first
        job = "push" if is_push(rec["job"]) else rec["job"]
        if len(marks[job]) < STRIP_MARKS:
            when = rec.get("started") or rec.get("tick")
            marks[job].append([when, rec["status"], run_kind(rec, jobs.get(rec["job"]))])
    return dict(marks)


def schedule_error_files(errors: list[str]) -> int:
    """How many distinct files a scheduler's `file:line: message` errors name."""
    return len({m.group(1) if (m := _ERROR_FILE.match(e)) else e for e in errors})


def job_tables(reports: list[dict]) -> list[dict]:
    """The job tables that define the job set: the live schedulers', else every kept one
    (all schedulers down: still show what they last reported)."""
    live = [r for r in reports if r["live"]]
    return live or reports


def running_jobs(workers: list[dict]) -> set[str]:
    """Jobs with a run in progress on some live worker."""
    return {job for w in workers for job in w.get("running_jobs", [])}


def scheduler_panel(reports: list[dict], configured: set[str], now: float) -> list[dict]:
    """Per scheduler: live or dead, firing or not, and why."""
    by_id = {r["scheduler"]: r for r in reports}
    rows = []
    for sid in sorted(configured | set(by_id)):
        report = by_id.get(sid)
        if report is None:
            rows.append({"id": sid, "state": "dead", "firing": False, "reason": "never reported"})
            continue
        firing = report["live"] and report.get("stats", {}).get("eligible", 1) == 1
        reason = "" if firing else report.get("reason") or "not eligible (no quorum or joining)"
        if not report["live"]:
            reason = f"silent for {now - report['seen']:.0f} s"
        rows.append({"id": sid, "state": "live" if report["live"] else "dead", "firing": firing,
                     "reason": reason, "jobs": len(report.get("jobs", [])),
                     "errors": len(report.get("errors", []))})  # fmt: skip
    return rows


def worker_panel(workers: list[dict], pools: set[str]) -> dict[str, list[dict]]:
    """Per pool its live workers with free slots; a pool jobs name that no worker serves
    is listed empty."""
    panel: dict[str, list[dict]] = {pool: [] for pool in pools}
    for w in sorted(workers, key=lambda w: w["worker"]):
        row = {"id": w["worker"], "slots": w["slots"], "free": max(0, w["free"]),
               "running": len(w.get("running", []))}  # fmt: skip
        for pool in sorted(set(w["pools"])):
            panel.setdefault(pool, []).append(row)
    return dict(sorted(panel.items()))


def schedule_errors(reports: list[dict]) -> list[dict]:
    """Every distinct schedule-file error and the live schedulers reporting it."""
    found: dict[str, list[str]] = {}
    for report in reports:
        if report["live"]:
            for error in report.get("errors", []):
                found.setdefault(error, []).append(report["scheduler"])
    return [{"error": e, "schedulers": sorted(s)} for e, s in sorted(found.items())]
