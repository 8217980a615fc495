"""The systemd units: `systemd-analyze verify` is silent on each, and the daemons started
with each unit's own ExecStart line speak sd_notify on a real datagram socket."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO, Cluster, Processes, make_cluster
from tests.tools import ensure_tool
from zcron.config import WorkerConfig, parse_duration
from zcron.daemon import Notifier

pytestmark = pytest.mark.timeout(60)

UNITS = sorted((REPO / "systemd").iterdir())
SERVICES = {"scheduler": "zcron-scheduler.service", "worker": "zcron-worker@.service"}
SERVICES["sink"] = "zcron-sink.service"
INSTALLED_ZCRON = "/usr/local/bin/zcron"
INSTALLED_CONFIG = "/etc/zcron/zcron.conf"


def directives(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, by key."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if re.match(r"[A-Za-z]+=", line):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return ensure_tool("systemd-analyze", "systemd")


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify_silently(
    unit: Path, systemd_analyze: str, tmp_path: Path
) -> None:
    # verify insists that ExecStart's binary exists: point it at a shim with the same role.
    shim = tmp_path / "zcron"
    shim.write_text('#!/bin/sh\nexec python3 -m zcron "$@"\n')
    shim.chmod(0o755)
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_ZCRON, str(shim)))
    result = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # verify exits 0 on unknown keys and bad values: any output at all is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("role", sorted(SERVICES))
def test_service_is_notify_type_and_does_not_restart_on_config_errors(role: str) -> None:
    keys = directives(REPO / "systemd" / SERVICES[role])
    assert keys["Type"] == ["notify"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["RestartPreventExitStatus"] == ["2"]
    assert keys["StateDirectory"] and keys["RuntimeDirectory"]
    assert keys["WantedBy"] == ["zcron.target"] and keys["PartOf"] == ["zcron.target"]
    # ordered after the target, so that stopping the target waits for this unit's stop
    assert "zcron.target" in keys["After"]


def test_worker_unit_lets_the_drain_finish() -> None:
    keys = directives(REPO / "systemd" / SERVICES["worker"])
    assert keys["KillMode"] == ["mixed"], "else systemd SIGTERMs running jobs too"
    # the drain, then up to 2 s to deliver the last results, before systemd's SIGKILL
    assert parse_duration(keys["TimeoutStopSec"][0]) > WorkerConfig().drain_timeout + 2
    assert "%i" in keys["StateDirectory"][0], "each instance needs its own spool"
    assert "NoNewPrivileges" not in keys and "ProtectHome" not in keys


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket, as systemd's $NOTIFY_SOCKET."""
    directory = tempfile.mkdtemp(prefix="zcron-notify-")  # short: sun_path holds 108 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "notify"))
    yield sock
    sock.close()
    os.unlink(os.path.join(directory, "notify"))
    os.rmdir(directory)


def read_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Every field received until a datagram holds the `wanted` line; fail at the deadline."""
    fields: list[str] = []
    deadline = time.monotonic() + timeout
    while wanted not in fields:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {wanted} within {timeout}s; got {fields}")
        sock.settimeout(remaining)
        try:
            fields += sock.recv(4096).decode().split("\n")
        except TimeoutError:
            continue
    return fields


def exec_start_args(role: str, cluster: Cluster) -> list[str]:
    """The unit's ExecStart arguments, as systemd would pass them, with the test's config.

    Environment variables are unset (no per-instance file): systemd then passes "".
    """
    (line,) = directives(REPO / "systemd" / SERVICES[role])["ExecStart"]
    line = line.replace("%H", "testhost").replace("%i", "1")
    line = re.sub(r"\$\{[A-Z_]+\}", "''", line).replace(INSTALLED_CONFIG, str(cluster.config_path))
    argv = shlex.split(line)
    assert argv[0] == INSTALLED_ZCRON
    return argv[1:]


def start_notifying(
    procs: Processes, cluster: Cluster, role: str, sock: socket.socket, **env: str
) -> subprocess.Popen:
    args = exec_start_args(role, cluster)
    return procs.start(*args, env={"NOTIFY_SOCKET": sock.getsockname(), **env})


@pytest.mark.parametrize("role", sorted(SERVICES))
def test_daemon_sends_ready_after_its_signal_handlers_and_stopping_on_sigterm(
    role: str, procs: Processes, notify_socket: socket.socket, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path)
    proc = start_notifying(procs, cluster, role, notify_socket)
    read_until(notify_socket, "READY=1", 20)
    # Python's default action for HUP would kill it (HUP is delivered before TERM).
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGTERM)
    read_until(notify_socket, "STOPPING=1", 20)
    assert proc.wait(20) == 0, procs.log(proc)


def test_scheduler_reload_is_bracketed_by_reloading_and_ready(
    procs: Processes, notify_socket: socket.socket, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path)
    proc = start_notifying(procs, cluster, "scheduler", notify_socket)
    read_until(notify_socket, "READY=1", 20)
    proc.send_signal(signal.SIGHUP)
    fields = read_until(notify_socket, "RELOADING=1", 2)
    assert any(f.startswith("MONOTONIC_USEC=") for f in fields)
    read_until(notify_socket, "READY=1", 2)
    assert procs.stop(proc) == 0


@pytest.mark.parametrize("role", sorted(SERVICES))
def test_daemon_pings_the_watchdog_and_reports_status(
    role: str, procs: Processes, notify_socket: socket.socket, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path)
    proc = start_notifying(procs, cluster, role, notify_socket, WATCHDOG_USEC="400000")
    fields = read_until(notify_socket, "READY=1", 20)
    fields += read_until(notify_socket, "WATCHDOG=1", 1)
    read_until(notify_socket, "WATCHDOG=1", 0.5)  # every WATCHDOG_USEC / 2
    assert any(f.startswith("STATUS=") for f in fields)
    assert procs.stop(proc) == 0


def test_notifier_sends_every_state_as_one_datagram(notify_socket: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
    notifier.ready("3 jobs\nfrom /etc/zcron.d")
    notifier.reloading()
    notifier.status("2/4 slots busy")
    notifier.stopping()
    notify_socket.settimeout(1)
    got = [notify_socket.recv(4096).decode() for _ in range(4)]
    assert got[0] == "READY=1\nSTATUS=3 jobs from /etc/zcron.d"
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading", got[1])
    assert got[2:] == ["STATUS=2/4 slots busy", "STOPPING=1"]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"zcron-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        sock.settimeout(1)
        assert sock.recv(4096) == b"READY=1"


def test_watchdog_pings_at_half_its_timeout_on_the_callers_clock(
    notify_socket: socket.socket,
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "10000000"}
    notifier = Notifier(env)
    assert notifier.watchdog_interval() == 5.0
    assert notifier.watchdog_due(1000.0) == 1000.0
    for now in (1000.0, 1004.9, 1005.0, 1009.0, 1010.0):
        notifier.watchdog_if_due(now)
    assert notifier.watchdog_due(1010.0) == 1015.0
    assert notifier.watchdog_wait_s(1011.0) == 4.0
    notify_socket.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(notify_socket.recv(64))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 3


def test_no_watchdog_without_systemd_or_in_another_process(notify_socket: socket.socket) -> None:
    address = notify_socket.getsockname()
    for env in (
        {"WATCHDOG_USEC": "1000000"},
        {"NOTIFY_SOCKET": address},
        {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"},
        {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "bogus"},
    ):
        notifier = Notifier(env)
        assert notifier.watchdog_interval() is None
        assert notifier.watchdog_due(5.0) == notifier.watchdog_wait_s(5.0) == float("inf")
    assert not Notifier({}).send("READY=1")
