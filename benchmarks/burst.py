"""A burst: N no-op jobs due at one instant on 2 workers, against a bare Python spawn loop.

zcron: one cron.d file with N jobs `S M * * * *  -  true` due at one chosen second, a
sink, a scheduler and two workers; from the sink's records: the time from the tick until
every run had started and until every run had finished, and jobs/s (N / all finished).
Bare loops on the same machine: N × `/bin/sh -c true` by subprocess.Popen and by
os.posix_spawn, started one after another, then all waited for. The peers (measure_peer):
N APScheduler DateTriggers / N celery beat entries due at the second, each running
`/bin/sh -c true` in the scheduler's pool (20 threads / prefork -c 8), timed around it.

    python3 benchmarks/burst.py [--jobs 5000] [--workers 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    NOOP_COMMAND,
    REPO,
    Processes,
    free_port,
    sink_runs,
    wait_until,
    write_config,
    write_crond,
)
from benchmarks.systems import READY_MARKS, STARTERS, peer  # noqa: E402
from benchmarks.workload import read_timed_runs  # noqa: E402


def write_setup(root: Path, jobs: int, slots: int, tick: int) -> tuple[Path, int]:
    """The config and one cron.d file of `jobs` jobs due at `tick`; the sink's HTTP port."""
    when = f"{tick % 60} {tick // 60 % 60} {tick // 3600 % 24} * * *"
    jobs_lines = [(f"burst-{i:05d}", f"{when}  -  true") for i in range(jobs)]
    schedules = write_crond(root, ["CRON_TZ=UTC"], jobs_lines)
    http = free_port()
    return write_config(root, schedules, slots=slots, http=http), http


def records(http: int, tick: int) -> list[dict]:
    return [r for r in sink_runs(http, tick - 1) if r["tick"] == tick]


def start(root: Path, config: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(root / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "zcron", *args, "-c", str(config)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def measure_zcron(jobs: int, workers: int, lead_s: float, timeout_s: float, keep: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="zcron-burst-"))
    print(f"zcron under {root}", file=sys.stderr)
    tick = int(time.time() + lead_s)
    config, http = write_setup(root, jobs, -(-jobs // workers) + 16, tick)
    procs = [start(root, config, "sink", "sink")]
    for n in range(1, workers + 1):
        procs.append(start(root, config, f"w{n}", "worker", "--id", f"w{n}"))
    procs.append(start(root, config, "scheduler", "scheduler"))
    try:
        deadline = time.time() + lead_s + timeout_s
        done: list[dict] = []
        while time.time() < deadline and len(done) < jobs:
            time.sleep(0.5)
            done = records(http, tick)
    finally:
        for proc in reversed(procs):
            stop(proc)
    statuses: dict[str, int] = {}
    for rec in done:
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    started = [r["started"] for r in done if r["started"]]
    finished = [r["finished"] for r in done if r["finished"]]
    result = {
        "workers": workers,
        "recorded": len(done),
        "statuses": statuses,
        "per_worker": {w: sum(1 for r in done if r["worker"] == w) for w in sorted(
            {r["worker"] for r in done if r["worker"]})},
        **timeline(jobs, tick, started, finished),
    }  # fmt: skip
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def timeline(jobs: int, origin: float, started: list[float], finished: list[float]) -> dict:
    """Seconds from `origin` until the first run started, every run started and finished."""
    result: dict = {
        "jobs": jobs,
        "ran": len(finished),
        "first_started_s": min(started) - origin if started else None,
        "all_started_s": max(started) - origin if started else None,
        "all_finished_s": max(finished) - origin if finished else None,
        "started_offsets_s": sorted(s - origin for s in started),
        "finished_offsets_s": sorted(f - origin for f in finished),
    }
    if finished:
        result["jobs_per_s"] = len(finished) / result["all_finished_s"]
    return result


def timed_runs_timeline(run: Processes, jobs: int, origin: float, timeout_s: float) -> dict:
    """Wait until `jobs` timed no-ops have run (or `timeout_s`); their timeline from `origin`."""
    wait_until(lambda: len(read_timed_runs(run.out)) >= jobs, timeout_s)
    runs = read_timed_runs(run.out)
    return timeline(jobs, origin, [r[0] for r in runs], [r[1] for r in runs])


def measure_peer(system: str, jobs: int, lead_s: float, timeout_s: float,
                 probe: Callable | None = None, **env: str) -> dict:  # fmt: skip
    """The burst on APScheduler 3 or Celery beat + worker: `jobs` no-ops due `lead_s` from now
    (`probe`: as systems.measure's)."""
    tick = int(time.time() + lead_s)
    with peer(system, "burst", jobs, BENCH_TICK=str(tick), **env) as run:
        STARTERS[system](run)
        watching = probe(run) if probe is not None else None
        ready = [run.wait_mark(name, tick - time.time()) for name in READY_MARKS[system]]
        result = timed_runs_timeline(run, jobs, tick, tick + timeout_s - time.time())
        result.update(watching.stop(tick) if watching is not None else {})
        result["ready_before_tick"] = all(mark and mark["at"] < tick for mark in ready)
        if not run.alive():
            result["log"] = run.log_tails()
    return result


def measure_loop(jobs: int, spawn: str) -> dict:
    """Start `jobs` shells one after another, then wait for all; seconds from the first."""
    env = {"PATH": "/usr/bin:/bin"}
    t0 = time.monotonic()
    if spawn == "popen":
        children = [subprocess.Popen(NOOP_COMMAND, env=env) for _ in range(jobs)]
        all_started = time.monotonic() - t0
        for child in children:
            child.wait()
    else:
        pids = [os.posix_spawn(NOOP_COMMAND[0], NOOP_COMMAND, env) for _ in range(jobs)]
        all_started = time.monotonic() - t0
        for pid in pids:
            os.waitpid(pid, 0)
    all_finished = time.monotonic() - t0
    return {
        "jobs": jobs,
        "spawn": spawn,
        "all_started_s": all_started,
        "all_finished_s": all_finished,
        "jobs_per_s": jobs / all_finished,
    }


def raise_fd_limit() -> None:
    """Each armed run holds 4 fds in its worker: let the children open enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lead", type=float, default=10.0, help="seconds to start up")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "burst.json"))
    args = parser.parse_args()
    raise_fd_limit()
    rows = [
        ("bare loop, subprocess.Popen", measure_loop(args.jobs, "popen")),
        ("bare loop, os.posix_spawn", measure_loop(args.jobs, "posix_spawn")),
        (f"zcron, {args.workers} workers", measure_zcron(args.jobs, args.workers, args.lead,
                                                         args.timeout, args.keep)),
    ]  # fmt: skip
    zcron = rows[-1][1]
    print(f"{args.jobs} jobs `/bin/sh -c true` due at one instant")
    print(f"{'':32} {'all started s':>14} {'all finished s':>15} {'jobs/s':>8} {'zcron ×':>8}")
    for name, r in rows:
        ratio = (zcron["all_finished_s"] or 0) / r["all_finished_s"] if r["all_finished_s"] else 0
        print(
            f"{name:32} {r['all_started_s'] or 0:>14.2f} {r['all_finished_s'] or 0:>15.2f} "
            f"{r.get('jobs_per_s', 0):>8.0f} {ratio:>8.2f}"
        )
    print(f"zcron: {zcron['recorded']} records {zcron['statuses']}, {zcron['per_worker']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "kernel": platform.release()}  # fmt: skip
    results = {name: r for name, r in rows}
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": machine,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "results": results,
                "ratio_vs_popen": zcron["all_finished_s"] / rows[0][1]["all_finished_s"]
                if zcron["all_finished_s"]
                else None,
                "ratio_vs_posix_spawn": zcron["all_finished_s"] / rows[1][1]["all_finished_s"]
                if zcron["all_finished_s"]
                else None,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
