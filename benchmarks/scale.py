"""Scale: one scheduler with 10,000 / 100,000 registered jobs of mixed schedules, idle.

Start-up (zcron: until `zcron status --json` answers with the full job count; the peers:
until APScheduler has started / beat has made its first pass), VmRSS, and idle CPU over 10 s
(utime + stime from /proc) of the scheduler process: zcron's scheduler, the APScheduler
process, celery beat. The schedules (daily, weekdays, every other day, monthly, 6-field) are
placed at hours away from now, so the 10 s are idle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, cpu_s, rss_mb, stop, write_config, write_crond
from benchmarks.systems import peer, start_apscheduler, start_celery, start_redis

SHAPES = ("{m} {h} * * *", "{m} {h} * * 1-5", "{m} {h} */2 * *", "{s} {m} {h} 1 * *",
          "{s} {m} {h} * * 0")  # fmt: skip
TIMEOUT_S = 300.0  # start-up longer than this is the result


def mixed_schedule(i: int, hour: int) -> str:
    """Job i's cron expression: the shapes in turn, at hours 2–21 after `hour` (UTC)."""
    return SHAPES[i % len(SHAPES)].format(s=i % 60, m=i // 60 % 60, h=(hour + 2 + i % 20) % 24)


def write_setup(root: Path, jobs: int) -> Path:
    hour = time.gmtime().tm_hour
    jobs_lines = [(f"scale-{i:06d}", f"{mixed_schedule(i, hour)}  -  true") for i in range(jobs)]
    return write_config(root, write_crond(root, ["CRON_TZ=UTC"], jobs_lines))


def job_count(config: Path) -> int | None:
    try:
        reply = subprocess.run([sys.executable, "-m", "zcron", "status", "--json", "-c",
                                str(config)], cwd=REPO, capture_output=True, text=True,
                               timeout=30)  # fmt: skip
        return json.loads(reply.stdout)["schedulers"]["a"].get("jobs")
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        return None


def idle_profile(pid: int, startup_s: float, idle_s: float) -> dict:
    """Start-up CPU, then idle CPU % over `idle_s` (after 2 s to settle) and RSS of `pid`."""
    result = {"startup_s": startup_s, "startup_cpu_s": cpu_s(pid)}
    time.sleep(2.0)
    before = cpu_s(pid)
    time.sleep(idle_s)
    result["idle_cpu_pct"] = (cpu_s(pid) - before) / idle_s * 100
    result["rss_mb"] = rss_mb(pid)
    return result


def measure(jobs: int, idle_s: float = 10.0, timeout_s: float = TIMEOUT_S) -> dict:
    root = Path(tempfile.mkdtemp(prefix="zcron-scale-"))
    config = write_setup(root, jobs)
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "zcron", "scheduler", "-c", str(config)],
                            cwd=REPO, stdout=open(root / "scheduler.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    result: dict = {"system": "zcron", "jobs": jobs}
    try:
        while time.monotonic() - began < timeout_s and proc.poll() is None:
            if job_count(config) == jobs:
                result.update(idle_profile(proc.pid, time.monotonic() - began, idle_s))
                break
            time.sleep(0.5)
        else:
            result["error"] = (root / "scheduler.log").read_text()[-1000:]
    finally:
        stop(proc, 30)
    shutil.rmtree(root, ignore_errors=True)
    return result


def measure_peer(
    system: str, jobs: int, idle_s: float = 10.0, timeout_s: float = TIMEOUT_S
) -> dict:
    """The same on APScheduler 3 or celery beat (its Redis started first, no worker)."""
    result: dict = {"system": system, "jobs": jobs}
    with peer(system, "scale", jobs) as run:
        if system == "celery":
            start_redis(run)  # before the clock: beat's broker, not beat
            began = time.time()
            start_celery(run, roles=("scheduler",))
        else:
            began = time.time()
            start_apscheduler(run)
        ready = run.wait_mark("scheduler-ready", timeout_s)
        if ready:
            result["registered"] = ready["jobs"]
            result.update(idle_profile(run.procs["scheduler"].pid, ready["at"] - began, idle_s))
        elif run.alive():
            result["error"] = f"not started after {timeout_s:.0f} s"
        else:
            result["error"] = "exited: " + run.log_tails().get("scheduler", "")[-600:]
    return result


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [10_000]:
        print(json.dumps(measure(n)))
