"""Failover: SIGKILL of the scheduler in a setup of 30 per-second jobs, a restart 6 s later.

zcron: 3 schedulers (heartbeat 100 ms, peer_timeout 600 ms), one worker, a sink; the victim is
the scheduler that owns most jobs (`zcron status --json`), its successors catch up its ticks.
APScheduler 3 (its one process) and celery beat (its worker and Redis live on) have no
failover: what a user gets is the ticks missed until the restart, and how the restarted
scheduler carries on. The kill is mid-second (the next tick is already dispatched); the window
is the 6 s to the restart and 6 s after. Every system runs the latency line, so ticks are
counted and timed from the job's own clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    Processes,
    free_port,
    read_starts,
    security,
    shell_jobs,
    sleep_until,
    wait_until,
    write_crond,
)
from benchmarks.systems import STARTERS, WARMUP_S, peer

IDS = ("a", "b", "c")
KILL_TO_RESTART_S = 6
AFTER_RESTART_S = 6


def write_setup(root: Path, jobs: int, out: Path) -> dict[str, Path]:
    schedules = write_crond(root, ["SHELL=/bin/bash"], shell_jobs(jobs, out))
    peers = ", ".join(f'{s} = "tcp://127.0.0.1:{free_port()}"' for s in IDS)
    sink, http = free_port(), free_port()
    configs = {}
    keys, clients = security(root, IDS)
    for sid in IDS:
        configs[sid] = root / f"{sid}.conf"
        configs[sid].write_text(f"""[cluster]
schedulers = {{ {peers} }}
sink = "tcp://127.0.0.1:{sink}"
heartbeat = "100ms"
peer_timeout = "600ms"
{keys}
{clients}
[scheduler]
id = "{sid}"
schedules = "{schedules}"
state = "{root}/state-{sid}"
[worker]
slots = {jobs * 2}
spool = "{root}/worker"
[sink]
http = "127.0.0.1:{http}"
data = "{root}/sink"
""")
    return configs


def owned(config: Path) -> dict[str, int]:
    reply = subprocess.run([sys.executable, "-m", "zcron", "status", "--json", "-c", str(config)],
                           cwd=REPO, capture_output=True, text=True, timeout=20)  # fmt: skip
    views = json.loads(reply.stdout)["schedulers"]
    return {sid: v.get("owned", 0) for sid, v in views.items() if v["state"] == "live"}


def kill_and_restart(run: Processes, name: str) -> tuple[float, float]:
    """SIGKILL `name` mid-second, restart it KILL_TO_RESTART_S later, wait out the window."""
    sleep_until(int(time.time()) + 1.3)  # mid-second: the next tick is already dispatched
    killed_at = time.time()
    run.kill(name)
    sleep_until(killed_at + KILL_TO_RESTART_S)
    restarted_at = time.time()
    run.restart(name)
    sleep_until(killed_at + KILL_TO_RESTART_S + AFTER_RESTART_S + 1.5)
    return killed_at, restarted_at


def tally(out: Path, jobs: int, killed_at: float, restarted_at: float) -> dict:
    """Ticks of the window missed and run twice; worst lateness per second, the first ones."""
    starts = read_starts(out)
    first, last = int(killed_at) + 1, int(killed_at) + KILL_TO_RESTART_S + AFTER_RESTART_S
    window = {k: v for k, v in starts.items() if first <= k[1] <= last}
    lateness = {k: (v[0] - k[1]) * 1000 for k, v in window.items()}
    by_second = {t: max(ms for (j, tt), ms in lateness.items() if tt == t)
                 for t in sorted({k[1] for k in window})}  # fmt: skip
    first_start = {t: min(v[0] for (j, tt), v in window.items() if tt == t) for t in by_second}
    # the first tick whose runs started after the restart: how soon, how late
    resumed = next((t for t in by_second if first_start[t] >= restarted_at), None)
    expected = jobs * (last - first + 1)
    return {
        "jobs": jobs, "killed_at": killed_at, "restarted_at": restarted_at,
        "window_s": last - first + 1, "expected_ticks": expected, "ran": len(window),
        "missed": expected - len(window),
        "duplicates": sum(len(v) - 1 for v in window.values()),
        "max_ms": max(lateness.values()) if lateness else None,
        "first_tick_max_ms": by_second.get(float(first)),
        "restart_to_first_run_s": resumed and first_start[resumed] - restarted_at,
        "first_tick_after_restart_max_ms": by_second.get(resumed),
        "max_ms_by_second": {str(t - killed_at): ms for t, ms in by_second.items()},
    }  # fmt: skip


def measure(jobs: int = 30) -> dict:
    """zcron: SIGKILL of the busiest owner of 3 schedulers, restarted 6 s later."""
    with Processes("zcron-failover") as run:
        configs = write_setup(run.root, jobs, run.out)
        for role in ("sink", "worker"):
            run.python(role, "-m", "zcron", role, "-c", str(configs["a"]))
        for sid in IDS:
            run.python(sid, "-m", "zcron", "scheduler", "-c", str(configs[sid]))
        # Warm-up: every scheduler live and the jobs divided (the warm-up covers the
        # longest dispatch lead, ~4 s here), then a few settled ticks.
        wait_until(lambda: sum(owned(configs["a"]).values()) == jobs, 30)
        time.sleep(2.0)
        shares = owned(configs["a"])
        victim = max(shares, key=shares.get)
        killed_at, restarted_at = kill_and_restart(run, victim)
        run.stop_all()
        return {"victim": victim, "owned": shares, **tally(run.out, jobs, killed_at, restarted_at)}


def measure_peer(system: str, jobs: int = 30) -> dict:
    """APScheduler 3 or celery beat: SIGKILL of the scheduler process, restarted 6 s later."""
    with peer(system, "second", jobs) as run:
        STARTERS[system](run)
        time.sleep(WARMUP_S[system])
        killed_at, restarted_at = kill_and_restart(run, "scheduler")
        alive = run.alive()
        run.stop_all()
        result = tally(run.out, jobs, killed_at, restarted_at)
        if not alive:
            result["log"] = run.log_tails()
        return result


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
    os._exit(0)
