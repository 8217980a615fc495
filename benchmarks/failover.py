"""Failover: 3 schedulers, SIGKILL of the busiest owner, lateness of the ticks it owed.

30 per-second jobs, heartbeat 100 ms, peer_timeout 600 ms, one worker, a sink. After a
warm-up the scheduler that owns most jobs (`zcron status --json`) is SIGKILLed; ticks from
the kill on are the ones its successors must catch up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    free_port,
    read_starts,
    shell_jobs,
    sleep_until,
    stop,
    write_crond,
)

IDS = ("a", "b", "c")


def write_setup(root: Path, jobs: int, out: Path) -> dict[str, Path]:
    schedules = write_crond(root, ["SHELL=/bin/bash"], shell_jobs(jobs, out))
    peers = ", ".join(f'{s} = "tcp://127.0.0.1:{free_port()}"' for s in IDS)
    sink, http = free_port(), free_port()
    configs = {}
    for sid in IDS:
        configs[sid] = root / f"{sid}.conf"
        configs[sid].write_text(f"""[cluster]
schedulers = {{ {peers} }}
sink = "tcp://127.0.0.1:{sink}"
heartbeat = "100ms"
peer_timeout = "600ms"
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


def zcron(root: Path, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "zcron", *args], cwd=REPO, start_new_session=True,
        stdout=open(root / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def owned(config: Path) -> dict[str, int]:
    reply = subprocess.run([sys.executable, "-m", "zcron", "status", "--json", "-c", str(config)],
                           cwd=REPO, capture_output=True, text=True, timeout=20)  # fmt: skip
    views = json.loads(reply.stdout)["schedulers"]
    return {sid: v.get("owned", 0) for sid, v in views.items() if v["state"] == "live"}


def measure(jobs: int = 30, after_s: int = 6) -> dict:
    root = Path(tempfile.mkdtemp(prefix="zcron-failover-"))
    out = root / "starts.txt"
    configs = write_setup(root, jobs, out)
    procs = {"sink": zcron(root, "sink", "sink", "-c", str(configs["a"])),
             "worker": zcron(root, "worker", "worker", "-c", str(configs["a"]))}  # fmt: skip
    for sid in IDS:
        procs[sid] = zcron(root, sid, "scheduler", "-c", str(configs[sid]))
    try:
        time.sleep(4.0)
        shares = owned(configs["a"])
        victim = max(shares, key=shares.get)
        sleep_until(int(time.time()) + 1.3)  # mid-second: the next tick is already dispatched
        killed_at = time.time()
        procs[victim].send_signal(signal.SIGKILL)
        sleep_until(killed_at + after_s + 1.5)
    finally:
        for proc in procs.values():
            stop(proc, 20)
    starts = read_starts(out)
    first, last = int(killed_at) + 1, int(killed_at) + after_s
    window = {k: v for k, v in starts.items() if first <= k[1] <= last}
    lateness = {k: (v[0] - k[1]) * 1000 for k, v in window.items()}
    by_second = {t: max(ms for (j, tt), ms in lateness.items() if tt == t)
                 for t in sorted({k[1] for k in window})}  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    return {
        "jobs": jobs, "victim": victim, "owned": shares, "killed_at": killed_at,
        "expected_ticks": jobs * after_s, "ran": len(window),
        "missed": jobs * after_s - len(window),
        "duplicates": sum(len(v) - 1 for v in window.values()),
        "max_ms": max(lateness.values()) if lateness else None,
        "first_tick_max_ms": by_second.get(float(first)),
        "max_ms_by_second": {str(t - killed_at): ms for t, ms in by_second.items()},
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
    os._exit(0)
