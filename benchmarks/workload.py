"""What runs inside the peers' processes (aps_runner, celery_app): the jobs' commands, the
line each appends to $BENCH_OUT, and the marks that tell the benchmark where a runner is."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import NOOP_COMMAND, SHELL_LINE

JOB_PATH = "/usr/bin:/bin"


def mark(name: str, **fields: float) -> None:
    """For a runner: tell the benchmark it reached `name` (the instant, and `fields`)."""
    folder = Path(os.environ["BENCH_MARKS"])
    draft = folder / f".{name}.json"
    draft.write_text(json.dumps({"at": time.time(), **fields}))
    draft.rename(folder / f"{name}.json")


def run_tick_line(name: str, tick: float = 0.0) -> None:
    """For a runner: the latency workload's `bash -c` line, as zcron runs it for this tick.

    (The default only satisfies APScheduler's check of a job's arguments: it passes the tick.)
    """
    env = {"PATH": JOB_PATH, "ZCRON_JOB": name, "ZCRON_TICK": f"{tick:.6f}"}
    line = SHELL_LINE.format(out=os.environ["BENCH_OUT"])
    subprocess.run(["/bin/bash", "-c", line], env=env, check=False)


def run_timed_noop(name: str) -> None:
    """For a runner: run NOOP_COMMAND; append `name started finished` to $BENCH_OUT."""
    started = time.time()
    subprocess.run(NOOP_COMMAND, env={"PATH": JOB_PATH}, check=False)
    finished = time.time()
    # One write of one line in append mode: lines from many threads and processes stay whole.
    with open(os.environ["BENCH_OUT"], "a") as out:
        out.write(f"{name} {started:.6f} {finished:.6f}\n")


def push_timed_noops(submit: Callable[[str], object], jobs: int) -> None:
    """For a runner: submit(name) a timed no-op `jobs` times, as fast as it goes; marks "pushed"."""
    first = time.time()
    for i in range(jobs):
        submit(f"push-{i:05d}")
    mark("pushed", first=first, last=time.time())


def read_timed_runs(out: Path) -> list[tuple[float, float]]:
    """(started, finished) of each line run_timed_noop appended."""
    if not out.exists():
        return []
    runs = [line.split() for line in out.read_text().splitlines()]
    return [(float(r[1]), float(r[2])) for r in runs if len(r) == 3]
