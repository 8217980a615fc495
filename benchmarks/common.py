"""Shared by the benchmarks: ports, percentiles, lateness from the jobs' own lines, /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What every system under test runs for a tick: the job's own clock at its start.
SHELL_LINE = 'echo "$ZCRON_JOB $ZCRON_TICK $EPOCHREALTIME" >> {out}'
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_crond(root: Path, header: list[str], jobs: Iterable[tuple[str, str]]) -> Path:
    """A schedules directory with one cron.d file: `header` lines, then each (name, line)."""
    schedules = root / "zcron.d"
    schedules.mkdir()
    lines = list(header)
    for name, line in jobs:
        lines += [f"# name: {name}", line]
    (schedules / "bench").write_text("\n".join(lines) + "\n")
    return schedules


def shell_jobs(count: int, out: Path) -> list[tuple[str, str]]:
    """`count` per-second jobs that each append their own start time to `out`."""
    return [
        (f"bench-{i:04d}", f"* * * * * *  -  {SHELL_LINE.format(out=out)}") for i in range(count)
    ]


def write_config(root: Path, schedules: Path, slots: int = 4, http: int | None = None) -> Path:
    """A single-node loopback config on free ports, all state under `root`."""
    config = root / "zcron.conf"
    config.write_text(f"""[cluster]
schedulers = {{ a = "tcp://127.0.0.1:{free_port()}" }}
sink = "tcp://127.0.0.1:{free_port()}"
[scheduler]
schedules = "{schedules}"
state = "{root}/scheduler"
[worker]
slots = {slots}
spool = "{root}/worker"
[sink]
http = "127.0.0.1:{http or free_port()}"
data = "{root}/sink"
""")
    return config


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def read_starts(out: Path) -> dict[tuple[str, float], list[float]]:
    """(job, tick) → the start instants its command wrote."""
    starts: dict[tuple[str, float], list[float]] = {}
    if not out.exists():
        return starts
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            starts.setdefault((parts[0], round(float(parts[1]), 3)), []).append(float(parts[2]))
    return starts


def summarize(out: Path, jobs: int, first: float, seconds: int) -> dict:
    """Missed, duplicates and lateness percentiles of ticks first … first+seconds−1."""
    starts = read_starts(out)
    last = first + seconds - 1
    window = [k for k in starts if first <= k[1] <= last]
    lateness_ms = sorted((starts[k][0] - k[1]) * 1000 for k in window)
    expected = jobs * seconds
    stat = lambda q: percentile(lateness_ms, q) if lateness_ms else None  # noqa: E731
    return {
        "jobs": jobs,
        "seconds": seconds,
        "expected_ticks": expected,
        "ran": len(window),
        "missed": expected - len(window),
        "duplicates": sum(len(starts[k]) - 1 for k in window),
        "p50_ms": stat(0.50),
        "p99_ms": stat(0.99),
        "p999_ms": stat(0.999),
        "max_ms": lateness_ms[-1] if lateness_ms else None,
        "lateness_ms": lateness_ms,
    }


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM the process, SIGKILL its process group when it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # it was started in its own session
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def sleep_until(instant: float) -> None:
    while (left := instant - time.time()) > 0:
        time.sleep(min(left, 0.5))
