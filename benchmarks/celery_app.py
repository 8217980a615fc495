"""Celery beat + worker on Redis, on the benchmark's workload (loaded by `celery -A`).

N beat entries due every second, aligned to the second boundary (EachSecond); each task
runs the same `bash -c` line by subprocess.run with ZCRON_TICK = the second beat sent it for.
Environment: BENCH_JOBS, BENCH_OUT, BENCH_BROKER.
"""

from __future__ import annotations

import os
import subprocess
import time

from celery import Celery
from celery.beat import PersistentScheduler
from celery.schedules import schedstate, schedule

from benchmarks.common import SHELL_LINE

LINE = SHELL_LINE.format(out=os.environ.get("BENCH_OUT", "/dev/null"))
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


class SecondScheduler(PersistentScheduler):
    """Beat, telling each task the second it was sent for."""

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if isinstance(entry.schedule, EachSecond):
            entry.kwargs = {"tick": float(entry.schedule.second)}
        return super().apply_async(entry, producer, advance, **kwargs)


@app.task(name="bench.shell")
def shell(name: str, tick: float = 0.0) -> None:
    env = {"PATH": "/usr/bin:/bin", "ZCRON_JOB": name, "ZCRON_TICK": f"{tick:.6f}"}
    subprocess.run(["/bin/bash", "-c", LINE], env=env, check=False)


app.conf.beat_schedule = {
    f"bench-{i:04d}": {"task": "bench.shell", "schedule": EachSecond(), "args": (f"bench-{i:04d}",)}
    for i in range(int(os.environ.get("BENCH_JOBS", "0")))
}
