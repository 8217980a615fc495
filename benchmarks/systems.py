"""The same per-second workload on the floor, APScheduler 3 and Celery beat + worker on Redis.

Each `start_*` starts its processes in their own sessions and returns them; `measure` runs
the window and stops them by pid, even on failure. zcron itself is benchmarks/latency.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, free_port, sleep_until, stop, summarize

WARMUP_S = {"floor": 1.0, "apscheduler": 3.0, "celery": 8.0}


def spawn(root: Path, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=open(root / f"{name}.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def start_floor(root: Path, jobs: int, out: Path) -> list[subprocess.Popen]:
    return [spawn(root, "floor", [sys.executable, "-m", "benchmarks.floor", str(jobs), str(out)])]


def start_apscheduler(root: Path, jobs: int, out: Path) -> list[subprocess.Popen]:
    argv = [sys.executable, "-m", "benchmarks.aps_runner", str(jobs), str(out)]
    return [spawn(root, "apscheduler", argv)]


def start_celery(root: Path, jobs: int, out: Path) -> list[subprocess.Popen]:
    """redis-server on a free loopback port, a celery worker (prefork, 8) and celery beat."""
    port = free_port()
    server = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
              "--save", "", "--appendonly", "no", "--dir", str(root)]  # fmt: skip
    redis = spawn(root, "redis", server)
    env = {"BENCH_JOBS": str(jobs), "BENCH_OUT": str(out),
           "BENCH_BROKER": f"redis://127.0.0.1:{port}/0"}  # fmt: skip
    celery = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_app"]
    work = ["worker", "-c", "8", "--without-gossip", "--without-mingle", "-l", "warning"]
    worker = spawn(root, "celery-worker", [*celery, *work], env)
    beat_args = ["beat", "-S", "benchmarks.celery_app:SecondScheduler",
                 "-s", str(root / "beat-schedule"), "-l", "warning"]  # fmt: skip
    beat = spawn(root, "celery-beat", [*celery, *beat_args], env)
    return [beat, worker, redis]


STARTERS = {"floor": start_floor, "apscheduler": start_apscheduler, "celery": start_celery}


def measure(system: str, jobs: int, seconds: int) -> dict:
    """N per-second jobs on `system` for `seconds` after its warm-up; as latency.measure."""
    root = Path(tempfile.mkdtemp(prefix=f"zcron-bench-{system}-"))
    out = root / "starts.txt"
    procs: list[subprocess.Popen] = []
    try:
        procs = STARTERS[system](root, jobs, out)
        time.sleep(WARMUP_S[system])
        first = int(time.time()) + 1
        sleep_until(first + seconds)
        time.sleep(1.5)  # as for zcron: the last ticks' commands may still be starting
        alive = all(p.poll() is None for p in procs)
    finally:
        for proc in procs:
            stop(proc, 20)
    result = summarize(out, jobs, first, seconds)
    result["alive"] = alive
    if not alive:
        result["log"] = {p.name: p.read_text()[-2000:] for p in root.glob("*.log")}
    shutil.rmtree(root, ignore_errors=True)
    return result
