"""Every benchmark in one run: zcron against the bare spawn loop, APScheduler 3 and Celery.

Writes benchmarks/results/latest.{json,md}, lateness_cdf.png, burst_timeline.png and
push_timeline.png. Every part runs every system of --systems it has a measurement for.

    python3 -m benchmarks [--quick] [--seconds 30] [--jobs 1,100,1000] [--parts PARTS]
        [--systems SYSTEMS] [--burst-jobs N] [--push-jobs N] [--cli-pushes N] [--scale-jobs N,N]
        [--slots N] [--results DIR]

The pool part (benchmarks/pool.py) runs every workload again with pools of --slots (2):
zcron at --slots and at its default, APScheduler's ProcessPoolExecutor and Celery's -c.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks import burst, failover, ingest, latency, pool, push, scale, systems
from benchmarks.common import REPO, attempt

RESULTS = REPO / "benchmarks" / "results"
PARTS = ("latency", "burst", "push", "ingest", "failover", "scale", "pool")
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
            if system == "floor":  # and the floor of zcron's parked design
                print(f"latency: floor_parked, {n} jobs/s, {seconds} s", flush=True)
                parked = systems.measure("floor_parked", n, seconds)
                rows.append({"system": "floor_parked", **parked})
    return rows


def run_burst(jobs: int, only: list[str]) -> dict:
    burst.raise_fd_limit()
    results = {}
    for system in only:
        print(f"burst: {system}, {jobs} jobs", flush=True)
        if system == "floor":
            results[system] = burst.measure_loop(jobs, "posix_spawn")
        elif system == "zcron":
            results[system] = burst.measure_zcron(jobs, 2, 10.0, 120.0, False)
        else:
            results[system] = attempt(burst.measure_peer, system, jobs, 12.0, 120.0)
    return results


def run_ingest(records: int) -> dict:
    print(f"ingest: {records} records", flush=True)
    return {"end_to_end": ingest.end_to_end(records, 4, 500),
            "store_only": ingest.store_only(records, 100)}  # fmt: skip


def run_failover(only: list[str]) -> dict:
    results = {}
    for system in (s for s in only if s != "floor"):
        print(f"failover: {system}", flush=True)
        if system == "zcron":
            results[system] = failover.measure()
        else:
            results[system] = attempt(failover.measure_peer, system)
    return results


def run_scale(jobs: list[int], peer_jobs: list[int], only: list[str]) -> list[dict]:
    rows = []
    for system in (s for s in only if s != "floor"):
        for n in jobs if system == "zcron" else peer_jobs:
            print(f"scale: {system}, {n:,} jobs", flush=True)
            if system == "zcron":
                rows.append(scale.measure(n))
            else:
                rows.append({"system": system, "jobs": n, **attempt(scale.measure_peer, system, n)})
    return rows


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def arguments() -> argparse.Namespace:
    """The command line, with each size resolved for --quick or a full run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s windows, smaller runs")
    parser.add_argument("--seconds", type=int, default=None, help="latency window (30)")
    parser.add_argument("--jobs", default="1,100,1000")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--burst-jobs", type=int, help="jobs due at one instant (5000; quick 1000)")
    parser.add_argument("--push-jobs", type=int, help="pushes by one client (5000; quick 1000)")
    parser.add_argument("--cli-pushes", type=int, help="`zcron push` invocations (100; quick 20)")
    parser.add_argument("--scale-jobs", help="registered jobs (10000,100000; peers quick 10000)")
    parser.add_argument("--slots", type=int, default=2, help="the pool part's pool size (2)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    quick = args.quick
    args.seconds = args.seconds or (10 if quick else 30)
    args.burst_jobs = args.burst_jobs or (1000 if quick else 5000)
    args.push_jobs = args.push_jobs or (1000 if quick else 5000)
    args.cli_pushes = args.cli_pushes or (20 if quick else 100)
    args.peer_scale_jobs = numbers(args.scale_jobs or ("10000" if quick else "10000,100000"))
    args.scale_jobs = numbers(args.scale_jobs or "10000,100000")
    return args


def measure(args: argparse.Namespace) -> dict:
    parts, only = args.parts.split(","), args.systems.split(",")
    report: dict = {"machine": machine(), "seconds": args.seconds, "quick": args.quick,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    if "latency" in parts:
        report["latency"] = run_latency(numbers(args.jobs), args.seconds, only)
    if "burst" in parts:
        report["burst"] = run_burst(args.burst_jobs, only)
    if "push" in parts:
        report["push"] = push.measure(args.push_jobs, args.cli_pushes, only)
    if "ingest" in parts:
        report["ingest"] = run_ingest(10_000 if args.quick else 50_000)
    if "failover" in parts:
        report["failover"] = run_failover(only)
    if "scale" in parts:
        report["scale"] = run_scale(args.scale_jobs, args.peer_scale_jobs, only)
    if "pool" in parts:
        sizes = (args.burst_jobs, args.push_jobs, args.cli_pushes)
        report["pool"] = pool.measure(args.slots, numbers(args.jobs), args.seconds, *sizes, only)
    return report


def main() -> int:
    args = arguments()
    report = measure(args)
    args.results.mkdir(parents=True, exist_ok=True)
    from benchmarks import report as render  # matplotlib only when writing

    (args.results / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / "latest.md").write_text(render.markdown(report))
    try:
        render.plots(report, args.results)
    except ImportError as exc:  # the tables are written; the plots need '.[bench]'
        print(f"no plots: {exc} (python3 -m pip install -e '.[bench]')")
    print((args.results / "latest.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
