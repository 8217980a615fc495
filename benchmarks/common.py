"""Shared by the benchmarks: ports, percentiles, lateness from the jobs' own lines, /proc,
the processes of one measurement."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What every system under test runs for a tick: the job's own clock at its start.
SHELL_LINE = 'echo "$ZCRON_JOB $ZCRON_TICK $EPOCHREALTIME" >> {out}'
# What every system runs in the burst and push parts.
NOOP_COMMAND = ["/bin/sh", "-c", "true"]
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


def security(root: Path, names: Iterable[str]) -> tuple[str, str]:
    """(lines for [cluster], a [clients] section): CURVE keys for `names`, the worker ids
    the benchmarks use and the CLI, as a real cluster has them; or, with
    ZCRON_BENCH_INSECURE=1, plaintext (the row to compare CURVE's cost against)."""
    if os.environ.get("ZCRON_BENCH_INSECURE") == "1":
        return "insecure = true", ""
    from zcron.auth import write_keypair

    keys = root / "keys"
    for name in {*names, "sink", "cli", socket.gethostname(), *(f"w{n}" for n in range(10))}:
        if not (keys / f"{name}.key_secret").exists():
            write_keypair(str(keys), name)
    user = os.environ.get("USER") or "root"
    return f'keys = "{keys}"', f'[clients]\ncli = ["{user}"]\n'


def write_config(root: Path, schedules: Path, slots: int = 4, http: int | None = None) -> Path:
    """A single-node loopback config on free ports, all state under `root`."""
    config = root / "zcron.conf"
    keys, clients = security(root, ["a"])
    config.write_text(f"""[cluster]
schedulers = {{ a = "tcp://127.0.0.1:{free_port()}" }}
sink = "tcp://127.0.0.1:{free_port()}"
{keys}
{clients}
[scheduler]
schedules = "{schedules}"
state = "{root}/scheduler"
[worker]
slots = {slots}
{os.environ.get("BENCH_WORKER_EXTRA", "")}
spool = "{root}/worker"
[sink]
http = "127.0.0.1:{http or free_port()}"
data = "{root}/sink"
""")
    return config


def sink_runs(http: int, since: float) -> list[dict]:
    """The sink's records (/api/runs) since `since`, up to 10,000; [] while it does not answer."""
    return sink_query(http, since=since, limit=10_000)


def sink_query(http: int, **params: object) -> list[dict]:
    """/api/runs with these parameters (job, since, until, status, limit); [] without a sink."""
    query = "&".join(f"{name}={value}" for name, value in params.items())
    url = f"http://127.0.0.1:{http}/api/runs?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except OSError:
        return []


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


def wait_until(condition: Callable[[], object], timeout_s: float, every_s: float = 0.5) -> bool:
    """Poll `condition` until it is true (True) or `timeout_s` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


def attempt(measure: Callable[..., dict], *args: object) -> dict:
    """A peer's measurement, or {"error": why} when it fails: a peer that cannot run here
    (no Redis, a broken install) is a result, not the end of the run. Prints the traceback."""
    try:
        return measure(*args)
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def ensure_tool(binary: str, package: str) -> str:
    """The path of `binary`; apt-get installs Debian's `package` first when missing and root."""
    if path := shutil.which(binary):
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{binary} not found; install {package} (apt-get install {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if path := shutil.which(binary):
        return path
    raise RuntimeError(f"installing {package} for {binary} failed:\n{result.stderr[-2000:]}")


class Processes:
    """The processes of one measurement, under one temporary directory.

    Each runs in its own session with a log `<name>.log`, can be SIGKILLed and restarted by
    name, and is stopped by pid in close() (use it as a context manager). `out` is the file
    the jobs append their lines to; `env` also tells the peers' runners where to leave marks.
    """

    def __init__(self, label: str, **env: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"zcron-bench-{label}-"))
        self.out = self.root / "runs.txt"
        self.marks = self.root / "marks"
        self.marks.mkdir()
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_OUT": str(self.out),
                    "BENCH_MARKS": str(self.marks), **env}  # fmt: skip
        self.argv: dict[str, list[str]] = {}
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.argv[name] = argv
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self.procs[name]

    def python(self, name: str, *args: str) -> subprocess.Popen:
        return self.spawn(name, [sys.executable, *args])

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def restart(self, name: str) -> subprocess.Popen:
        return self.spawn(name, self.argv[name])

    def mark(self, name: str) -> dict | None:
        """What a runner wrote with `mark(name)`, or None before it has."""
        try:
            return json.loads((self.marks / f"{name}.json").read_text())
        except FileNotFoundError:
            return None

    def wait_mark(self, name: str, timeout_s: float) -> dict | None:
        """The mark, once written; None after `timeout_s` or when a process has exited."""
        wait_until(lambda: self.mark(name) or not self.alive(), timeout_s, 0.1)
        return self.mark(name)

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs.values())

    def log_tails(self) -> dict[str, str]:
        logs = self.root.glob("*.log")
        return {log.stem: log.read_text(errors="replace")[-2000:] for log in logs}

    def stop_all(self) -> None:
        """Stop every process by pid, the last started first."""
        for proc in reversed(list(self.procs.values())):
            stop(proc, 20)

    def close(self) -> None:
        self.stop_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
