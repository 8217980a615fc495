"""Scale: one scheduler with 10,000 / 100,000 registered jobs of mixed schedules.

Start-up (until `zcron status --json` answers with the full job count), VmRSS, and idle
CPU over 10 s (utime + stime from /proc). The schedules (daily, weekdays, every other day,
monthly, 6-field) are placed at hours away from now, so the 10 s are idle.
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

SHAPES = ("{m} {h} * * *", "{m} {h} * * 1-5", "{m} {h} */2 * *", "{s} {m} {h} 1 * *",
          "{s} {m} {h} * * 0")  # fmt: skip


def write_setup(root: Path, jobs: int) -> Path:
    hour = time.gmtime().tm_hour
    jobs_lines = []
    for i in range(jobs):
        when = SHAPES[i % len(SHAPES)].format(s=i % 60, m=i // 60 % 60, h=(hour + 2 + i % 20) % 24)
        jobs_lines.append((f"scale-{i:06d}", f"{when}  -  true"))
    return write_config(root, write_crond(root, ["CRON_TZ=UTC"], jobs_lines))


def job_count(config: Path) -> int | None:
    try:
        reply = subprocess.run([sys.executable, "-m", "zcron", "status", "--json", "-c",
                                str(config)], cwd=REPO, capture_output=True, text=True,
                               timeout=30)  # fmt: skip
        return json.loads(reply.stdout)["schedulers"]["a"].get("jobs")
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        return None


def measure(jobs: int, idle_s: float = 10.0, timeout_s: float = 300.0) -> dict:
    root = Path(tempfile.mkdtemp(prefix="zcron-scale-"))
    config = write_setup(root, jobs)
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "zcron", "scheduler", "-c", str(config)],
                            cwd=REPO, stdout=open(root / "scheduler.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    result: dict = {"jobs": jobs}
    try:
        while time.monotonic() - began < timeout_s and proc.poll() is None:
            if job_count(config) == jobs:
                result["startup_s"] = time.monotonic() - began
                break
            time.sleep(0.5)
        if "startup_s" in result:
            result["startup_cpu_s"] = cpu_s(proc.pid)
            time.sleep(2.0)
            before = cpu_s(proc.pid)
            time.sleep(idle_s)
            result["idle_cpu_pct"] = (cpu_s(proc.pid) - before) / idle_s * 100
            result["rss_mb"] = rss_mb(proc.pid)
        else:
            result["error"] = (root / "scheduler.log").read_text()[-1000:]
    finally:
        stop(proc, 30)
    shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [10_000]:
        print(json.dumps(measure(n)))
