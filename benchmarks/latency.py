"""Tick lateness through `zcron up`: N jobs due every second, lateness from the job's own clock.

lateness = bash's $EPOCHREALTIME when the job starts − ZCRON_TICK (its scheduled instant).
Prints p50/p99/p99.9/max per N and the count of missed and duplicate ticks; writes JSON.

    python3 benchmarks/latency.py [--jobs 1,100,1000] [--seconds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    REPO,
    children,
    cmdline,
    cpu_s,
    shell_jobs,
    sleep_until,
    stop,
    summarize,
    write_config,
    write_crond,
)


def write_setup(root: Path, jobs: int, out: Path) -> Path:
    schedules = write_crond(root, ["SHELL=/bin/bash"], shell_jobs(jobs, out))
    return write_config(root, schedules, slots=max(4, jobs * 2))


def role_cpu(up: int) -> dict[str, float]:
    """CPU seconds so far of each of `zcron up`'s children, by role (scheduler, worker, sink),
    and of the worker's spawners (not the jobs: their processes have exited)."""
    usage = {"up": cpu_s(up)}
    for pid in children(up):
        args = cmdline(pid)
        role = next((a for a in args if a in ("scheduler", "worker", "sink")), str(pid))
        usage[role] = usage.get(role, 0.0) + cpu_s(pid)
        for spawner in (p for p in children(pid) if "zcron.spawner" in cmdline(p)):
            usage["spawners"] = usage.get("spawners", 0.0) + cpu_s(spawner)
    return usage


def measure(jobs: int, seconds: int, env: dict | None = None) -> dict:
    """N per-second jobs through `zcron up` for `seconds`; lateness, misses, CPU by role."""
    root = Path(tempfile.mkdtemp(prefix="zcron-bench-"))
    out = root / "starts.txt"
    config = write_setup(root, jobs, out)
    log = open(root / "up.log", "wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "zcron", "up", "-c", str(config)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        time.sleep(2.0)  # warm-up: let every process start and the worker announce its slots
        first = int(time.time()) + 1
        sleep_until(first)
        before = role_cpu(up.pid)
        sleep_until(first + seconds)
        after = role_cpu(up.pid)
        time.sleep(1.5)  # let the last ticks' jobs finish writing
    finally:
        stop(up, 60)
    result = summarize(out, jobs, first, seconds)
    result["cpu_s"] = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}
    shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,100,1000")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency.json"))
    args = parser.parse_args()
    results = []
    print(
        f"{'jobs':>6} {'ticks':>7} {'missed':>6} {'dups':>5} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'max ms':>8}"
    )
    for jobs in [int(n) for n in args.jobs.split(",")]:
        r = measure(jobs, args.seconds)
        r.pop("lateness_ms")
        results.append(r)
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        print(
            f"{jobs:>6} {r['expected_ticks']:>7} {r['missed']:>6} {r['duplicates']:>5} "
            f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8} {fmt(r['p999_ms']):>9} "
            f"{fmt(r['max_ms']):>8}",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                },
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
