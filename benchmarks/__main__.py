"""Every benchmark in one run: zcron against the bare spawn loop, APScheduler 3 and Celery.

Writes benchmarks/results/latest.{json,md}, lateness_cdf.png and burst_timeline.png.

    python3 -m benchmarks [--quick] [--seconds 30] [--jobs 1,100,1000] [--parts PARTS]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks import burst, failover, ingest, latency, scale, systems
from benchmarks.common import REPO

RESULTS = REPO / "benchmarks" / "results"
PARTS = ("latency", "burst", "ingest", "failover", "scale")
SYSTEMS = ("zcron", "floor", "apscheduler", "celery")


def machine() -> dict:
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"nproc": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version()}  # fmt: skip


def run_latency(jobs: list[int], seconds: int, only: list[str]) -> list[dict]:
    rows = []
    for n in jobs:
        for system in only:
            print(f"latency: {system}, {n} jobs/s, {seconds} s", flush=True)
            if system == "zcron":
                row = latency.measure(n, seconds)
            else:
                row = systems.measure(system, n, seconds)
            rows.append({"system": system, **row})
    return rows


def run_burst(jobs: int) -> dict:
    burst.raise_fd_limit()
    print(f"burst: {jobs} jobs", flush=True)
    return {"posix_spawn": burst.measure_loop(jobs, "posix_spawn"),
            "zcron": burst.measure_zcron(jobs, 2, 10.0, 120.0, False)}  # fmt: skip


def run_ingest(records: int) -> dict:
    print(f"ingest: {records} records", flush=True)
    return {"end_to_end": ingest.end_to_end(records, 4, 500),
            "store_only": ingest.store_only(records, 100)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s windows, smaller runs")
    parser.add_argument("--seconds", type=int, default=None, help="latency window (30)")
    parser.add_argument("--jobs", default="1,100,1000")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--parts", default=",".join(PARTS))
    args = parser.parse_args()
    seconds = args.seconds or (10 if args.quick else 30)
    parts = args.parts.split(",")
    report: dict = {"machine": machine(), "seconds": seconds, "quick": args.quick,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    if "latency" in parts:
        jobs = [int(n) for n in args.jobs.split(",")]
        report["latency"] = run_latency(jobs, seconds, args.systems.split(","))
    if "burst" in parts:
        report["burst"] = run_burst(1000 if args.quick else 5000)
    if "ingest" in parts:
        report["ingest"] = run_ingest(10_000 if args.quick else 50_000)
    if "failover" in parts:
        print("failover", flush=True)
        report["failover"] = failover.measure()
    if "scale" in parts:
        report["scale"] = [scale.measure(n) for n in (10_000, 100_000)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    from benchmarks import report as render  # matplotlib only when writing

    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "latest.md").write_text(render.markdown(report))
    render.plots(report, RESULTS)
    print((RESULTS / "latest.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
