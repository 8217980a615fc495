"""Celery beat + worker on Redis, on the benchmarks' workloads (loaded by `celery -A`).

Beat holds $BENCH_JOBS entries, chosen by $BENCH_MODE:
second  due at every whole second (EachSecond), the latency line with ZCRON_TICK = the second
        beat sent it for (also the failover workload)
burst   due once at $BENCH_TICK (AtInstant), the timed no-op
scale   crontab() of scale.mixed_schedule (celery has no seconds: the 6-field ones lose theirs)
push    none: `python3 -m benchmarks.celery_app` is the client, a .delay() of the no-op per job

Environment also: BENCH_OUT, BENCH_MARKS, BENCH_BROKER. Beat marks "scheduler-ready" after its
first tick, the worker "worker-ready" (common.mark).
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery.beat import PersistentScheduler
from celery.schedules import crontab, schedstate, schedule
from celery.signals import worker_ready

from benchmarks.scale import mixed_schedule
from benchmarks.workload import mark, push_timed_noops, run_tick_line, run_timed_noop

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"))


class EachSecond(schedule):
    """Due at every whole second (celery's own `schedule(1.0)` drifts from the boundary)."""

    def __init__(self) -> None:
        super().__init__(run_every=1.0)
        self.second = 0  # the second is_due last found due: the tick apply_async sends

    def is_due(self, last_run_at) -> schedstate:
        # Stateless but for `second`: beat also calls is_due to order its heap.
        now = time.time()
        if int(now) > int(last_run_at.timestamp()):
            self.second = int(now)
            return schedstate(True, int(now) + 1 - now)
        return schedstate(False, int(now) + 1 - now)

    def __reduce__(self):
        return (EachSecond, ())


class AtInstant(schedule):
    """Due once, at `instant` (Unix seconds)."""

    def __init__(self, instant: float) -> None:
        super().__init__(run_every=1.0)
        self.instant = instant

    def is_due(self, last_run_at) -> schedstate:
        left = self.instant - time.time()
        if left <= 0 and last_run_at.timestamp() < self.instant:
            return schedstate(True, 3600.0)
        return schedstate(False, left if left > 0 else 3600.0)

    def __reduce__(self):
        return (AtInstant, (self.instant,))


def cron_schedule(expression: str) -> crontab:
    """A 5-field or (seconds first) 6-field cron expression as a crontab, minute resolution."""
    minute, hour, day, month, day_of_week = expression.split()[-5:]
    return crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
                   day_of_week=day_of_week)  # fmt: skip


class BenchScheduler(PersistentScheduler):
    """Beat, telling each latency task the second it was sent for; marks its first tick."""

    ticked = False

    def tick(self, *args, **kwargs):
        delay = super().tick(*args, **kwargs)
        if not self.ticked:
            self.ticked = True
            mark("scheduler-ready", jobs=len(self.schedule))
        return delay

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if isinstance(entry.schedule, EachSecond):
            entry.kwargs = {"tick": float(entry.schedule.second)}
        return super().apply_async(entry, producer, advance, **kwargs)


@app.task(name="bench.shell")
def shell(name: str, tick: float = 0.0) -> None:
    run_tick_line(name, tick)


@app.task(name="bench.noop")
def noop(name: str) -> None:
    run_timed_noop(name)


@worker_ready.connect
def on_worker_ready(**_) -> None:
    mark("worker-ready")


HOUR = time.gmtime().tm_hour
# mode → (the task of entry i, its schedule)
SCHEDULES = {
    "second": ("bench.shell", lambda i: EachSecond()),
    "burst": ("bench.noop", lambda i: AtInstant(float(os.environ["BENCH_TICK"]))),
    "scale": ("bench.noop", lambda i: cron_schedule(mixed_schedule(i, HOUR))),
}


def beat_entries(mode: str, jobs: int) -> dict[str, dict]:
    if mode not in SCHEDULES:
        return {}
    task, schedule_of = SCHEDULES[mode]
    return {f"bench-{i:05d}": {"task": task, "schedule": schedule_of(i),
                               "args": (f"bench-{i:05d}",)} for i in range(jobs)}  # fmt: skip


app.conf.beat_schedule = beat_entries(
    os.environ.get("BENCH_MODE", "second"), int(os.environ.get("BENCH_JOBS", "0"))
)

if __name__ == "__main__":
    push_timed_noops(noop.delay, int(os.environ["BENCH_JOBS"]))
