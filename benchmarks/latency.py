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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_setup(root: Path, jobs: int, out: Path) -> Path:
    schedules = root / "zcron.d"
    schedules.mkdir()
    lines = ["SHELL=/bin/bash"]
    for i in range(jobs):
        lines += [
            f"# name: bench-{i:04d}",
            f'* * * * * *  -  echo "$ZCRON_JOB $ZCRON_TICK $EPOCHREALTIME" >> {out}',
        ]
    (schedules / "bench").write_text("\n".join(lines) + "\n")
    config = root / "zcron.conf"
    config.write_text(f"""[cluster]
schedulers = {{ a = "tcp://127.0.0.1:{free_port()}" }}
sink = "tcp://127.0.0.1:{free_port()}"
[scheduler]
schedules = "{schedules}"
state = "{root}/scheduler"
[worker]
slots = {max(4, jobs * 2)}
spool = "{root}/worker"
[sink]
http = "127.0.0.1:{free_port()}"
data = "{root}/sink"
""")
    return config


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(jobs: int, seconds: float) -> dict:
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
    )
    try:
        time.sleep(2.0)  # warm-up: let every process start and the worker announce its slots
        first = float(int(time.time()) + 1)
        time.sleep(seconds + 1.0)
        last = first + seconds - 1
        time.sleep(1.5)  # let the last ticks' jobs finish writing
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
    starts: dict[tuple[str, float], list[float]] = {}
    for line in out.read_text().splitlines():
        job, tick, started = line.split()
        starts.setdefault((job, float(tick)), []).append(float(started))
    window = [(j, t) for (j, t) in starts if first <= t <= last]
    lateness_ms = [(starts[k][0] - k[1]) * 1000 for k in window]
    expected = jobs * int(seconds)
    duplicates = sum(len(starts[k]) - 1 for k in window)
    result = {
        "jobs": jobs,
        "seconds": seconds,
        "expected_ticks": expected,
        "ran": len(window),
        "missed": expected - len(window),
        "duplicates": duplicates,
        "p50_ms": percentile(lateness_ms, 0.50) if lateness_ms else None,
        "p99_ms": percentile(lateness_ms, 0.99) if lateness_ms else None,
        "p999_ms": percentile(lateness_ms, 0.999) if lateness_ms else None,
        "max_ms": max(lateness_ms) if lateness_ms else None,
    }
    shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,100,1000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency.json"))
    args = parser.parse_args()
    results = []
    print(
        f"{'jobs':>6} {'ticks':>7} {'missed':>6} {'dups':>5} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'max ms':>8}"
    )
    for jobs in [int(n) for n in args.jobs.split(",")]:
        r = measure(jobs, args.seconds)
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
