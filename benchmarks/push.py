"""Ad-hoc pushes of a no-op (`/bin/sh -c true`) into a running system, until all have run.

zcron, one node (a scheduler, one worker with 8 slots, a sink):
- cli: `zcron push -- /bin/sh -c true`, N times one after another as a shell script would:
  each is a Python start-up, so this is the command line's cost more than the scheduler's;
- client: one process sending N push requests one after another over one connection, with
  the command line's own client (zcron.client.SchedulerClient);
both until all N are recorded in the sink (/api/runs, polled every 0.5 s).
Peers: Celery .delay() of the same no-op task from one client process (a prefork worker, -c 8,
on Redis); APScheduler 3 add_job(trigger=None) into its running BackgroundScheduler (20
threads); the floor, a bare posix_spawn loop. Seconds from the first push until the last run
finished; pushes/s = N / that.

    python3 -m benchmarks.push [N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchmarks.burst import measure_loop, timed_runs_timeline, timeline
from benchmarks.common import (
    NOOP_COMMAND,
    REPO,
    Processes,
    attempt,
    free_port,
    sink_runs,
    wait_until,
    write_config,
    write_crond,
)
from benchmarks.systems import peer, start_apscheduler, start_celery
from zcron.client import SchedulerClient, ask_any
from zcron.config import Config, load_config
from zcron.errors import ZcronError

SLOTS = 8  # as Celery's 8 prefork processes


def push_records(http: int, since: float) -> list[dict]:
    """The sink's records of pushes made since `since`."""
    runs = sink_runs(http, since - 1)
    return [r for r in runs if r["job"].startswith("push:") and r["tick"] >= since]


def until_recorded(http: int, jobs: int, first: float, last: float, timeout_s: float) -> dict:
    """Wait until the `jobs` pushes made from `first` to `last` are recorded; their timeline."""
    done: list[dict] = []

    def all_recorded() -> bool:
        nonlocal done
        done = push_records(http, first)
        return len(done) >= jobs

    wait_until(all_recorded, timeout_s)
    started = [r["started"] for r in done if r["started"]]
    finished = [r["finished"] for r in done if r["finished"]]
    return {"submit_s": last - first, "recorded_s": time.time() - first,
            "statuses": dict(Counter(r["status"] for r in done)),
            **timeline(jobs, first, started, finished)}  # fmt: skip


def push_by_cli(config: Path, http: int, jobs: int, timeout_s: float) -> dict:
    argv = [sys.executable, "-m", "zcron", "push", "-c", str(config), "--", *NOOP_COMMAND]
    first = time.time()
    failed = sum(subprocess.run(argv, cwd=REPO, capture_output=True).returncode != 0
                 for _ in range(jobs))  # fmt: skip
    return {"failed": failed, **until_recorded(http, jobs, first, time.time(), timeout_s)}


def push_by_client(
    config: Config, http: int, jobs: int, timeout_s: float, pipelined: bool = False
) -> dict:
    """`jobs` pushes over one connection: each answered before the next, or pipelined
    (SchedulerClient.ask_many: the scheduler saves each loop turn's pushes in one commit)."""
    request = {"command": NOOP_COMMAND, "pool": "default", "timeout": None}
    first = time.time()
    with SchedulerClient(config, next(iter(config.cluster.schedulers))) as client:
        pushes = ({**request, "at": time.time()} for _ in range(jobs))
        if pipelined:
            replies = client.ask_many("push", pushes)
        else:
            replies = (client.ask("push", args) for args in pushes)
        for reply in replies:
            if not reply["ok"]:
                raise ZcronError(f"push refused: {reply['error']}")
    return until_recorded(http, jobs, first, time.time(), timeout_s)


def worker_slots_free(config: Config) -> bool:
    try:
        status = ask_any(config, "status", {})
    except ZcronError:
        return False
    return any(w["free"] for w in status["workers"])


def measure_zcron(jobs: int, cli_jobs: int, timeout_s: float = 120.0) -> dict:
    """`cli_jobs` pushes by the command line ("zcron_cli"), then `jobs` by one client ("zcron")."""
    with Processes("zcron-push") as run:
        http = free_port()
        path = write_config(run.root, write_crond(run.root, [], []), slots=SLOTS, http=http)
        for role in ("sink", "worker", "scheduler"):
            run.python(role, "-m", "zcron", role, "-c", str(path))
        config = load_config(str(path))
        if not wait_until(lambda: worker_slots_free(config), 30):
            return {"zcron": {"error": "no worker slots after 30 s", "log": run.log_tails()}}
        return {"zcron_cli": push_by_cli(path, http, cli_jobs, timeout_s),
                "zcron": push_by_client(config, http, jobs, timeout_s),
                "zcron_pipelined": push_by_client(config, http, jobs, timeout_s, True)}  # fmt: skip


def measure_peer(system: str, jobs: int, timeout_s: float = 120.0,
                 probe: Callable | None = None, **env: str) -> dict:  # fmt: skip
    """Celery: .delay() from a client process once the worker is ready; APScheduler: add_job
    (`probe`: as systems.measure's)."""
    with peer(system, "push", jobs, **env) as run:
        watching = probe(run) if probe is not None else None
        if system == "celery":
            start_celery(run, roles=("redis", "worker"))
            if not run.wait_mark("worker-ready", 60):
                return {"error": "celery worker not ready after 60 s", "log": run.log_tails()}
            run.python("client", "-m", "benchmarks.celery_app")
        else:
            start_apscheduler(run)
        pushed = run.wait_mark("pushed", timeout_s)
        if not pushed:
            return {"error": f"not pushed after {timeout_s:.0f} s", "log": run.log_tails()}
        result = timed_runs_timeline(run, jobs, pushed["first"], timeout_s)
        found = watching.stop() if watching is not None else {}
        return {"submit_s": pushed["last"] - pushed["first"], **result, **found}


def measure(jobs: int, cli_jobs: int, systems: list[str]) -> dict:
    """Every system in `systems` (zcron, apscheduler, celery, floor) on `jobs` pushes."""
    results: dict = {}
    for system in systems:
        print(f"push: {system}, {jobs} pushes", flush=True)
        if system == "zcron":
            results.update(measure_zcron(jobs, cli_jobs))
        elif system == "floor":
            results[system] = measure_loop(jobs, "posix_spawn")
        else:
            results[system] = attempt(measure_peer, system, jobs)
    return results


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    report = measure(count, 20, ["zcron", "floor", "apscheduler", "celery"])
    for name, r in report.items():
        print(name, json.dumps({k: v for k, v in r.items() if "offsets" not in k}))
