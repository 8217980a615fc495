"""The peers on the benchmarks' workloads: the floor, APScheduler 3, Celery beat + worker on Redis.

`peer(system, mode, jobs)` is the Processes of one measurement, with what the runners read:
BENCH_MODE (second, burst, push, scale: see aps_runner and celery_app), BENCH_JOBS, BENCH_OUT.
The `start_*` functions start a system's processes in it, its scheduler process under the
name "scheduler". `measure` is the latency part for the peers; zcron's own is latency.py.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

from benchmarks.common import (
    Processes,
    ensure_tool,
    free_port,
    sleep_until,
    summarize,
    wait_until,
)

WARMUP_S = {"floor": 1.0, "floor_parked": 1.0, "apscheduler": 3.0, "celery": 8.0}
# What the runners mark once they can take jobs (common.mark)
READY_MARKS = {"apscheduler": ("scheduler-ready",), "celery": ("worker-ready", "scheduler-ready")}
CELERY = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_app"]
CELERY_WORKERS = 8  # prefork processes


def peer(system: str, mode: str, jobs: int, **env: str) -> Processes:
    return Processes(f"{system}-{mode}", BENCH_MODE=mode, BENCH_JOBS=str(jobs), **env)


def start_floor(run: Processes) -> None:
    run.python("scheduler", "-m", "benchmarks.floor", run.env["BENCH_JOBS"], str(run.out))


def start_floor_parked(run: Processes) -> None:
    floor = ["-m", "benchmarks.floor", run.env["BENCH_JOBS"], str(run.out), "parked"]
    run.python("scheduler", *floor)


def start_apscheduler(run: Processes) -> None:
    run.python("scheduler", "-m", "benchmarks.aps_runner")


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_redis(run: Processes) -> None:
    """Debian's redis-server on a free loopback port, no persistence; BENCH_BROKER for the rest.

    Returns once it accepts connections, so that what starts next does not wait for it.
    """
    port = free_port()
    server = ensure_tool("redis-server", "redis-server")
    run.spawn("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(run.root)])  # fmt: skip
    run.env["BENCH_BROKER"] = f"redis://127.0.0.1:{port}/0"
    if not wait_until(lambda: accepts(port), 10, 0.05):
        raise RuntimeError(f"redis-server did not listen on {port}: {run.log_tails()}")


def start_celery(run: Processes, roles: tuple[str, ...] = ("redis", "worker", "scheduler")) -> None:
    """redis-server, a celery worker (prefork) and celery beat (the "scheduler"), or some."""
    if "redis" in roles:
        start_redis(run)
    if "worker" in roles:
        processes = run.env.get("BENCH_CONCURRENCY", str(CELERY_WORKERS))  # the pool part: 2
        worker = ["worker", "-c", processes, "--without-gossip", "--without-mingle",
                  "-l", "warning"]  # fmt: skip
        run.spawn("worker", [*CELERY, *worker])
    if "scheduler" in roles:
        beat = ["beat", "-S", "benchmarks.celery_app:BenchScheduler",
                "-s", str(run.root / "beat-schedule"), "-l", "warning"]  # fmt: skip
        run.spawn("scheduler", [*CELERY, *beat])


STARTERS = {"floor": start_floor, "floor_parked": start_floor_parked,
            "apscheduler": start_apscheduler, "celery": start_celery}  # fmt: skip


def measure(system: str, jobs: int, seconds: int, probe: Callable | None = None,
            **env: str) -> dict:  # fmt: skip
    """N per-second jobs on `system` for `seconds` after its warm-up; as latency.measure.
    `probe(run)`, when given, watches from the start; its `stop(first, last)` (the window's
    ticks) adds to the result before the processes stop (the pool part: peak PSS, what the
    system recorded)."""
    with peer(system, "second", jobs, **env) as run:
        STARTERS[system](run)
        watching = probe(run) if probe is not None else None
        time.sleep(WARMUP_S[system])
        first = int(time.time()) + 1
        sleep_until(first + seconds)
        time.sleep(1.5)  # as for zcron: the last ticks' commands may still be starting
        alive = run.alive()
        found = watching.stop(first, first + seconds - 1) if watching is not None else {}
        run.stop_all()
        result = {**summarize(run.out, jobs, first, seconds), **found}
        result["alive"] = alive
        if not alive:
            result["log"] = run.log_tails()
    return result
