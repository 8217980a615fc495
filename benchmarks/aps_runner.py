"""APScheduler 3 on the benchmark's workload: N jobs with CronTrigger(second="*").

Each job runs the same `bash -c` line by subprocess.run in APScheduler's default thread pool
(20 threads), with ZCRON_TICK set to the run time APScheduler scheduled. Defaults otherwise
(misfire_grace_time 1 s, max_instances 1, coalesce off).

    python3 -m benchmarks.aps_runner JOBS OUT
"""

from __future__ import annotations

import subprocess
import sys

import apscheduler.executors.pool as pool
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from benchmarks.common import SHELL_LINE

LINE = ""


def run_job(job, jobstore_alias, run_times, logger_name):
    """APScheduler's run_job, passing the scheduled instant to the job (for lateness)."""
    for run_time in run_times:
        job.func(*job.args, run_time.timestamp())
    return []


def shell(name: str, tick: float = 0.0) -> None:
    env = {"PATH": "/usr/bin:/bin", "ZCRON_JOB": name, "ZCRON_TICK": f"{tick:.6f}"}
    subprocess.run(["/bin/bash", "-c", LINE], env=env, check=False)


def main(jobs: int, out: str) -> None:
    global LINE
    LINE = SHELL_LINE.format(out=out)
    pool.run_job = run_job
    scheduler = BlockingScheduler(executors={"default": ThreadPoolExecutor(20)}, timezone="UTC")
    for i in range(jobs):
        name = f"bench-{i:04d}"
        scheduler.add_job(shell, CronTrigger(second="*", timezone="UTC"), args=[name], id=name)
    scheduler.start()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
