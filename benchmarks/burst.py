"""A burst: N no-op jobs due at one instant on 2 workers, against a bare Python spawn loop.

zcron: one cron.d file with N jobs `S M * * * *  -  true` due at one chosen second, a
sink, a scheduler and two workers; from the sink's records: the time from the tick until
every run had started and until every run had finished, and jobs/s (N / all finished).
Bare loops on the same machine: N × `/bin/sh -c true` by subprocess.Popen and by
os.posix_spawn, started one after another, then all waited for.

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
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, free_port, write_config, write_crond  # noqa: E402

COMMAND = ["/bin/sh", "-c", "true"]


def write_setup(root: Path, jobs: int, slots: int, tick: int) -> tuple[Path, int]:
    """The config and one cron.d file of `jobs` jobs due at `tick`; the sink's HTTP port."""
    when = f"{tick % 60} {tick // 60 % 60} {tick // 3600 % 24} * * *"
    jobs_lines = [(f"burst-{i:05d}", f"{when}  -  true") for i in range(jobs)]
    schedules = write_crond(root, ["CRON_TZ=UTC"], jobs_lines)
    http = free_port()
    return write_config(root, schedules, slots=slots, http=http), http


def records(http: int, tick: int) -> list[dict]:
    url = f"http://127.0.0.1:{http}/api/runs?since={tick - 1}&limit=10000"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return [r for r in json.loads(response.read()) if r["tick"] == tick]
    except OSError:
        return []


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
        "jobs": jobs,
        "workers": workers,
        "recorded": len(done),
        "statuses": statuses,
        "all_started_s": max(started) - tick if started else None,
        "all_finished_s": max(finished) - tick if finished else None,
        "first_started_s": min(started) - tick if started else None,
        "per_worker": {w: sum(1 for r in done if r["worker"] == w) for w in sorted(
            {r["worker"] for r in done if r["worker"]})},
    }  # fmt: skip
    result["started_offsets_s"] = sorted(s - tick for s in started)
    result["finished_offsets_s"] = sorted(f - tick for f in finished)
    if finished:
        result["jobs_per_s"] = len(done) / result["all_finished_s"]
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def measure_loop(jobs: int, spawn: str) -> dict:
    """Start `jobs` shells one after another, then wait for all; seconds from the first."""
    env = {"PATH": "/usr/bin:/bin"}
    t0 = time.monotonic()
    if spawn == "popen":
        children = [subprocess.Popen(COMMAND, env=env) for _ in range(jobs)]
        all_started = time.monotonic() - t0
        for child in children:
            child.wait()
    else:
        pids = [os.posix_spawn(COMMAND[0], COMMAND, env) for _ in range(jobs)]
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
