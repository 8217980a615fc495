"""`zcron up` end to end: real scheduler, worker and sink processes on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, child_pids, cmdline, tick_counts, wait_until

pytestmark = pytest.mark.timeout(90)

PER_SECOND = """\
SHELL=/bin/bash
# name: every-second
* * * * * *  -  echo "$ZCRON_JOB $ZCRON_TICK $EPOCHREALTIME" >> {out}
# name: every-second-too
* * * * * *  -  echo "$ZCRON_JOB $ZCRON_TICK $EPOCHREALTIME" >> {out}
"""


def start_up(procs: Processes, cluster: Cluster) -> subprocess.Popen:
    proc = procs.start("up", "-c", str(cluster.config_path), "--data", str(cluster.root / "data"))
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 20, "the sink's HTTP")
    return proc


def comm(pid: int) -> str:
    """The process's name (/proc/PID/comm): `zcron up` names its children zcron-ROLE."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def three_children(proc: subprocess.Popen) -> list[int]:
    return wait_until(
        lambda: len(child_pids(proc.pid)) == 3 and child_pids(proc.pid), 10, "three children"
    )


def all_runs(cluster: Cluster, **params: object) -> list[dict]:
    return cluster.runs(limit=10000, **params)


def runs_after(cluster: Cluster, job: str, after: float) -> list[dict]:
    return [r for r in all_runs(cluster, job=job) if r["tick"] > after]


def test_per_second_jobs_run_exactly_once_per_tick(procs: Processes, cluster: Cluster) -> None:
    out = cluster.root / "out.txt"
    (cluster.schedules / "seconds").write_text(PER_SECOND.format(out=out))
    start_up(procs, cluster)
    wait_until(lambda: len(all_runs(cluster, job="every-second")) >= 7, 30, "7 runs")
    records = all_runs(cluster)
    for job in ("every-second", "every-second-too"):
        ticks = sorted(r["tick"] for r in records if r["job"] == job)
        counts = tick_counts(records, job, ticks[0], ticks[-1])
        assert len(counts) >= 6 and set(counts.values()) == {1}, counts
        assert all(r["status"] == "ok" and r["exit_code"] == 0 for r in records if r["job"] == job)
    lines = [line.split() for line in out.read_text().splitlines()]
    seen = [(job, float(tick)) for job, tick, _ in lines]
    assert len(seen) == len(set(seen)), "a tick ran twice"
    for _job, tick, started in lines:
        assert float(tick) == int(float(tick)), "ZCRON_TICK is the scheduled whole second"
        assert 0 <= float(started) - float(tick) < 1.0


def test_run_record_has_every_field_and_cli_shows_it(procs: Processes, cluster: Cluster) -> None:
    (cluster.schedules / "seconds").write_text(
        "# name: hello\n* * * * * *  -  echo hello; echo oops >&2; exit 3\n"
    )
    start_up(procs, cluster)
    rec = wait_until(lambda: all_runs(cluster, job="hello"), 20, "a run of hello")[0]
    assert set(rec) >= {
        "run_id",
        "job",
        "tick",
        "attempt",
        "scheduler",
        "worker",
        "pool",
        "dispatched",
        "started",
        "finished",
        "exit_code",
        "signal",
        "status",
        "stdout_tail",
        "stderr_tail",
    }
    assert rec["status"] == "failed" and rec["exit_code"] == 3 and rec["signal"] is None
    assert rec["stdout_tail"] == "hello\n" and rec["stderr_tail"] == "oops\n"
    assert rec["dispatched"] <= rec["started"] and rec["tick"] <= rec["started"] <= rec["finished"]
    assert rec["scheduler"] == "a" and rec["pool"] == "default" and rec["attempt"] == 1
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "zcron",
            "runs",
            "-c",
            str(cluster.config_path),
            "hello",
            "--json",
            "--limit",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert cli.returncode == 0, cli.stderr
    printed = [json.loads(line) for line in cli.stdout.splitlines()]
    assert printed and all(r["job"] == "hello" for r in printed)
    with urllib.request.urlopen(cluster.http + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'zcron_runs_total{job_name="hello",status="failed"}' in metrics
    assert "zcron_dispatch_lateness_seconds_bucket" in metrics
    assert 'zcron_job_interval_seconds{job_name="hello"} 1.0' in metrics


def test_edited_file_takes_effect_while_running(procs: Processes, cluster: Cluster) -> None:
    path = cluster.schedules / "jobs"
    path.write_text("# name: edited\n* * * * * *  -  echo v1\n")
    start_up(procs, cluster)
    wait_until(lambda: all_runs(cluster, job="edited"), 20, "v1 runs")
    path.write_text("# name: edited\n* * * * * *  -  echo v2\n")
    (cluster.schedules / "added.toml").write_text(
        '[added]\nschedule = "* * * * * *"\ncommand = ["echo", "new"]\n'
    )
    wait_until(
        lambda: any(r["stdout_tail"] == "v2\n" for r in all_runs(cluster, job="edited")),
        20,
        "the edited command to run",
    )
    wait_until(lambda: all_runs(cluster, job="added"), 20, "the added job to run")


def test_broken_file_keeps_its_last_good_version(procs: Processes, cluster: Cluster) -> None:
    path = cluster.schedules / "jobs"
    path.write_text("# name: steady\n* * * * * *  -  echo steady\n")
    proc = start_up(procs, cluster)
    wait_until(lambda: all_runs(cluster, job="steady"), 20, "runs of steady")
    path.write_text("# name: steady\n* * * * * *  -  echo steady\n61 * * * * * * nope\n")
    wait_until(lambda: f"{path}:3" in procs.log(proc), 20, "the file:line error in the log")
    broken_at = time.time()
    wait_until(
        lambda: len(runs_after(cluster, "steady", broken_at)) >= 2, 20, "the old job to keep firing"
    )


def assert_gone(pids: list[int]) -> None:
    """None of these processes is left (a pid reused since is no zcron)."""
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zcron" not in cmdline(pid)


def test_sigterm_stops_everything_cleanly(procs: Processes, cluster: Cluster) -> None:
    proc = start_up(procs, cluster)
    children = wait_until(
        lambda: len(child_pids(proc.pid)) == 3 and child_pids(proc.pid), 10, "three children"
    )
    assert procs.stop(proc, signal.SIGTERM) == 0
    assert_gone(children)


def test_a_dead_child_stops_the_others_and_up_fails(procs: Processes, cluster: Cluster) -> None:
    proc = start_up(procs, cluster)
    children = three_children(proc)
    worker = next(pid for pid in children if comm(pid) == "zcron-worker")
    os.kill(worker, signal.SIGKILL)
    assert proc.wait(30) == 1
    assert_gone(children)


def fd_targets(pid: int, first: int = 0) -> set[str]:
    """What the process's fds from `first` on point at (paths, socket:[inode], ...)."""
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if int(fd) >= first:
            try:
                targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass  # closed meanwhile
    return targets


def shared_dirty_kib(pid: int) -> int:
    """KiB of written pages the process shares with others: after a fork, those it has not
    written since; an interpreter started by exec shares none."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Shared_Dirty:"):
            return int(line.split()[1])
    return 0


def test_roles_are_forked_from_up_and_share_its_pages_not_its_fds(
    procs: Processes, cluster: Cluster
) -> None:
    proc = start_up(procs, cluster)
    children = three_children(proc)
    roles = {comm(pid).removeprefix("zcron-"): pid for pid in children}
    assert set(roles) == {"scheduler", "worker", "sink"}
    # up's own fds (its lock, its signal socket pair); not its stdio, which they share
    stdio = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (0, 1, 2)}
    private = {t for t in fd_targets(proc.pid, 3) - stdio if not t.startswith("anon_inode:")}
    assert any(t.endswith("/data/lock") for t in private) and any(
        t.startswith("socket:") for t in private
    )
    for role, pid in roles.items():
        assert os.readlink(f"/proc/{pid}/exe") == os.readlink(f"/proc/{proc.pid}/exe")
        words = cmdline(pid).split()  # what ps and tools read
        assert "zcron" in words and role in words and "up" not in words, words
        assert os.getpgid(pid) == pid, "its own process group: Ctrl-C reaches only up"
        assert shared_dirty_kib(pid) > 4096, f"{role} shares no written pages: not forked"
        assert not private & fd_targets(pid), f"{role} holds fds of up's"
    worker_children = lambda: [cmdline(p) for p in child_pids(roles["worker"])]  # noqa: E731
    wait_until(
        lambda: any("zcron.spawner" in c for c in worker_children()),
        10,
        "the forked worker to start its spawner",
    )
    assert procs.stop(proc, signal.SIGTERM) == 0
    assert_gone(children)


def test_children_stop_when_up_is_killed(procs: Processes, cluster: Cluster) -> None:
    proc = start_up(procs, cluster)
    children = three_children(proc)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        gone = lambda: not any(comm(pid).startswith("zcron-") for pid in children)  # noqa: E731
        wait_until(gone, 30, "the children to get SIGTERM (PR_SET_PDEATHSIG) and exit")
    finally:
        for pid in children:
            if comm(pid).startswith("zcron-"):
                os.kill(pid, signal.SIGKILL)


def notify_datagrams(sock: socket.socket, timeout_s: float) -> list[tuple[int, str]]:
    """(sender pid, text) of each datagram that arrives within `timeout_s`."""
    sock.settimeout(timeout_s)
    got = []
    try:
        while True:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = next(struct.unpack("3i", cred[:12])[0] for level, kind, cred in ancillary
                       if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS))  # fmt: skip
            got.append((pid, data.decode()))
    except TimeoutError:
        return got


def test_only_up_talks_to_systemd(procs: Processes, cluster: Cluster) -> None:
    (cluster.schedules / "seconds").write_text("# name: tick\n* * * * * *  -  true\n")
    path = str(cluster.root / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}  # children would ping at 0.1 s
        proc = procs.start("up", "-c", str(cluster.config_path), "--data",
                           str(cluster.root / "data"), env=env)  # fmt: skip
        wait_until(lambda: all_runs(cluster, job="tick"), 30, "every role to be running")
        got = notify_datagrams(sock, 0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        got += notify_datagrams(sock, 0.5)
    assert [text for _, text in got] == ["READY=1", "STOPPING=1"], got
    assert {pid for pid, _ in got} == {proc.pid}


@pytest.mark.parametrize("level", ["info", "warning"])
def test_log_level_reaches_the_roles(procs: Processes, cluster: Cluster, level: str) -> None:
    (cluster.schedules / "seconds").write_text("# name: tick\n* * * * * *  -  true\n")
    proc = procs.start("up", "-c", str(cluster.config_path), "--data",
                       str(cluster.root / "data"), "--log-level", level)  # fmt: skip
    wait_until(lambda: all_runs(cluster, job="tick"), 30, "a run")
    assert procs.stop(proc, signal.SIGTERM) == 0
    # without the time stamp a terminal or ZCRON_LOG_TIMES puts first (log.py)
    lines = [re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line)
             for line in procs.log(proc).splitlines()]  # fmt: skip
    roles_info = [line for line in lines if line.startswith("zcron-") and ": INFO " in line]
    if level == "info":
        for role in ("zcron-scheduler[a]", "zcron-worker[", "zcron-sink"):
            assert any(line.startswith(role) for line in roles_info), (role, lines)
    else:
        assert not roles_info, roles_info
