"""APScheduler 3 on the benchmarks' workloads: $BENCH_JOBS jobs, chosen by $BENCH_MODE.

second  CronTrigger(second="*") per job, running the latency line with ZCRON_TICK = the run
        time APScheduler scheduled (also the failover workload)
burst   DateTrigger at $BENCH_TICK per job, running the timed no-op
scale   CronTriggers of scale.mixed_schedule, nothing due for hours
push    a BackgroundScheduler, then add_job(trigger=None) (run now) of the timed no-op per
        job from this process, as an application does; marks "pushed"

Jobs run in APScheduler's thread pool (20 threads), or with BENCH_POOL=process:N in a
ProcessPoolExecutor of N (sized like Celery's -c, the pool part); defaults otherwise
(max_instances 1, coalesce off) except misfire_grace_time=None: a job that waits for a
thread runs however late instead of being dropped after 1 s. A run skipped because the
job's previous run still runs is logged ("maximum number of running instances").
Marks "scheduler-ready" once started (common.mark).

    BENCH_MODE=second BENCH_JOBS=100 BENCH_OUT=FILE BENCH_MARKS=DIR python3 -m benchmarks.aps_runner
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

import apscheduler.executors.pool as pool
from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from benchmarks.scale import mixed_schedule
from benchmarks.workload import mark, push_timed_noops, run_tick_line, run_timed_noop


def run_job(job, jobstore_alias, run_times, logger_name):
    """APScheduler's run_job, passing the scheduled instant to the job (for lateness)."""
    for run_time in run_times:
        job.func(*job.args, run_time.timestamp())
    return []


def cron_trigger(expression: str) -> CronTrigger:
    """A 5-field or (seconds first) 6-field cron expression as a CronTrigger in UTC.

    APScheduler counts day_of_week from Monday = 0, cron from Sunday: the days differ, the
    cost of holding the trigger does not.
    """
    fields = expression.split()
    second, minute, hour, day, month, day_of_week = ["0", *fields] if len(fields) == 5 else fields
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                       day_of_week=day_of_week, timezone="UTC")  # fmt: skip


def burst_trigger(i: int) -> DateTrigger:
    return DateTrigger(datetime.fromtimestamp(float(os.environ["BENCH_TICK"]), UTC))


HOUR = time.gmtime().tm_hour
# mode → (what job i runs, its trigger)
SCHEDULES = {
    "second": (run_tick_line, lambda i: CronTrigger(second="*", timezone="UTC")),
    "burst": (run_timed_noop, burst_trigger),
    "scale": (run_timed_noop, lambda i: cron_trigger(mixed_schedule(i, HOUR))),
}


def executor() -> ThreadPoolExecutor | ProcessPoolExecutor:
    """$BENCH_POOL: "process:N" (a ProcessPoolExecutor of N), else "thread:N" (default 20)."""
    kind, _, size = os.environ.get("BENCH_POOL", "thread:20").partition(":")
    return (ProcessPoolExecutor if kind == "process" else ThreadPoolExecutor)(int(size or 20))


def main(mode: str, jobs: int) -> None:
    if mode == "second":
        pool.run_job = run_job
    kind = BackgroundScheduler if mode == "push" else BlockingScheduler
    scheduler = kind(executors={"default": executor()}, timezone="UTC",
                     job_defaults={"misfire_grace_time": None})  # fmt: skip
    ready = lambda event: mark("scheduler-ready", jobs=len(scheduler.get_jobs()))  # noqa: E731
    scheduler.add_listener(ready, EVENT_SCHEDULER_STARTED)
    if mode in SCHEDULES:
        func, trigger = SCHEDULES[mode]
        for i in range(jobs):
            name = f"bench-{i:05d}"
            scheduler.add_job(func, trigger(i), args=[name], id=name)
    scheduler.start()  # a BlockingScheduler runs here until SIGTERM
    if mode == "push":
        push_timed_noops(lambda name: scheduler.add_job(run_timed_noop, args=[name]), jobs)
        threading.Event().wait()


if __name__ == "__main__":
    main(os.environ["BENCH_MODE"], int(os.environ["BENCH_JOBS"]))
