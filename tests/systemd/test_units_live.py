"""The units under a live systemd on one node (n3: scheduler c, worker n3-1, sink), set up
with the commands of docs/operations.md: start, reload, drain, kill, watchdog, a config
error, journal priorities and a reboot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.systemd.conftest import host_runs_systemd
from tests.systemd.deploy import config, deploy_keys, start_units
from tests.systemd.machine import Host, Machine, wait_until

pytestmark = pytest.mark.timeout(420)  # the first test also builds the rootfs when uncached
SCHEDULER, WORKER, SINK = "zcron-scheduler.service", "zcron-worker@1.service", "zcron-sink.service"
DROPIN = "/etc/systemd/system/zcron-scheduler.service.d"


@pytest.fixture(scope="module")
def node(machines: Callable[..., Machine]) -> Iterator[Machine]:
    machine = Host() if host_runs_systemd() else machines("n3")
    deploy_keys(machine, "c")
    conf = config("c", '{ c = "tcp://127.0.0.1:7701" }', "tcp://127.0.0.1:7710")
    start_units(machine, conf, runs_sink=True)
    yield machine
    if isinstance(machine, Host):
        machine.remove()


def pid(node: Machine, unit: str) -> int:
    return int(node.show(unit)["ExecMainPID"])


def runs(node: Machine) -> list[dict]:
    out = node.sh("zcron runs --json --limit 100").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def push_sleep(node: Machine, seconds: int) -> None:
    """A one-off `sleep` on the worker; return once it runs."""
    before = node.sh("pgrep -c -x sleep").stdout.strip()
    node.sh(f"zcron push -- sleep {seconds}", check=True)
    wait_until(lambda: node.sh("pgrep -c -x sleep").stdout.strip() != before, 10, "sleep running")


def test_units_start_and_report_their_status(node: Machine) -> None:
    shown = {unit: node.show(unit) for unit in (SCHEDULER, WORKER, SINK)}
    for unit, props in shown.items():
        assert (props["ActiveState"], props["SubState"], props["Result"]) == (
            "active",
            "running",
            "success",
        ), (unit, props)
    assert shown[SCHEDULER]["StatusText"].endswith("jobs, 0 schedule errors")
    assert shown[WORKER]["StatusText"] == "pools default, 4 slots"
    assert f"worker {node.name}-1 serving pools ['default'] with 4 slots" in node.journal(WORKER)


def test_a_schedule_file_changed_by_itself_updates_the_status(node: Machine) -> None:
    node.write(
        "/etc/zcron.d/pair", "# name: one\n0 3 * * * root true\n# name: two\n0 4 * * * root true\n"
    )
    wait_until(
        lambda: node.show(SCHEDULER)["StatusText"] == "2 jobs, 0 schedule errors",
        10,
        "STATUS= with the two new jobs, without SIGHUP",
    )
    assert "SIGHUP" not in node.journal(SCHEDULER)


def test_reload_rereads_schedules_and_keeps_the_pid(node: Machine) -> None:
    before = pid(node, SCHEDULER)
    node.sh(f"systemctl reload {SCHEDULER}", check=True)
    assert "SIGHUP: re-reading /etc/zcron.d" in node.journal(SCHEDULER)
    props = node.show(SCHEDULER)
    assert (int(props["ExecMainPID"]), props["SubState"]) == (before, "running")


def test_errors_and_warnings_land_at_their_journal_priority(node: Machine) -> None:
    node.write("/etc/zcron.d/broken", "61 * * * * root true\n")
    wait_until(lambda: "1 schedule errors" in node.show(SCHEDULER)["StatusText"], 10, "the error")
    errors = node.journal(SCHEDULER, "-p", "err")
    assert "broken:1" in errors and "no job of this file is loaded until it is fixed" in errors
    assert "jobs loaded" not in errors, "info lines must stay at priority 6"
    assert "jobs loaded" in node.journal(SCHEDULER, "-p", "info")
    node.sh("rm /etc/zcron.d/broken", check=True)


def test_stopping_a_worker_drains_its_run_and_exits_0(node: Machine) -> None:
    push_sleep(node, 4)
    started = time.monotonic()
    stop = node.popen(f"systemctl stop {WORKER}")
    wait_until(lambda: node.show(WORKER)["StatusText"] == "draining 1 run", 3, "draining 1 run")
    assert stop.wait(30) == 0, stop.stdout.read()
    assert time.monotonic() - started > 2, "stop returned before the run finished"
    props = node.show(WORKER)
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == (
        "inactive",
        "success",
        "0",
    )
    assert "draining: no new jobs; waiting for 1 runs" in node.journal(WORKER)
    node.sh(f"systemctl start {WORKER}", check=True)
    wait_until(
        lambda: any(r["status"] == "ok" and r["finished"] - r["started"] > 3.5 for r in runs(node)),
        10,
        "the drained run recorded ok",
    )


def test_stopping_the_target_waits_for_the_drain(node: Machine) -> None:
    push_sleep(node, 4)
    started = time.monotonic()
    node.sh("systemctl stop zcron.target", check=True, timeout=60)
    assert time.monotonic() - started > 2, "zcron.target's stop returned while draining"
    for unit in (SCHEDULER, WORKER, SINK):
        assert node.show(unit)["ActiveState"] == "inactive", unit
    node.sh("systemctl start zcron.target", check=True)
    for unit in (SCHEDULER, WORKER, SINK):
        wait_until(lambda u=unit: node.show(u)["SubState"] == "running", 20, f"{unit} back")


def test_a_killed_worker_is_restarted_and_its_run_recorded_lost(node: Machine) -> None:
    push_sleep(node, 30)
    before = node.show(WORKER)
    node.sh(f"systemctl kill -s KILL {WORKER}", check=True)
    wait_until(
        lambda: node.show(WORKER)["NRestarts"] == str(int(before["NRestarts"]) + 1), 10, "a restart"
    )
    wait_until(lambda: node.show(WORKER)["SubState"] == "running", 10, "the worker running")
    assert node.show(WORKER)["ExecMainPID"] != before["ExecMainPID"]
    wait_until(lambda: any(r["status"] == "lost" for r in runs(node)), 15, "the run lost")


def test_the_watchdog_restarts_a_stopped_scheduler(node: Machine) -> None:
    node.sh(f"mkdir -p {DROPIN}", check=True)
    node.write(f"{DROPIN}/watchdog.conf", "[Service]\nWatchdogSec=2s\n")
    node.sh(f"systemctl daemon-reload && systemctl restart {SCHEDULER}", check=True)
    before = node.show(SCHEDULER)
    node.sh(f"kill -STOP {before['ExecMainPID']}", check=True)
    wait_until(lambda: node.show(SCHEDULER)["NRestarts"] != before["NRestarts"], 15, "a restart")
    assert "Watchdog timeout" in node.journal(SCHEDULER)
    node.sh(f"rm {DROPIN}/watchdog.conf && systemctl daemon-reload", check=True)
    wait_until(lambda: node.show(SCHEDULER)["SubState"] == "running", 10, "the scheduler back")


def override_scheduler(node: Machine, name: str, *options: str) -> None:
    """A drop-in that runs the scheduler with extra command-line options."""
    node.sh(f"mkdir -p {DROPIN}", check=True)
    node.write(
        f"{DROPIN}/{name}.conf",
        "[Service]\nExecStart=\n"
        f"ExecStart=/usr/local/bin/zcron scheduler -c /etc/zcron/zcron.conf {' '.join(options)}\n",
    )


def test_a_config_error_exits_2_is_not_restarted_and_logs_at_err(node: Machine) -> None:
    override_scheduler(node, "bad", "--id", "nosuch")
    node.sh(
        f"systemctl daemon-reload && systemctl reset-failed {SCHEDULER}; "
        f"systemctl restart {SCHEDULER}"
    )
    wait_until(lambda: node.show(SCHEDULER)["ActiveState"] == "failed", 10, "failed")
    time.sleep(2)  # RestartSec=1s: a restart would have begun by now
    props = node.show(SCHEDULER)
    assert (props["Result"], props["ExecMainStatus"], props["NRestarts"]) == ("exit-code", "2", "0")
    assert "nosuch" in node.journal(SCHEDULER, "-p", "err")
    node.sh(
        f"rm {DROPIN}/bad.conf && systemctl daemon-reload && systemctl restart {SCHEDULER}",
        check=True,
    )
    wait_until(lambda: node.show(SCHEDULER)["SubState"] == "running", 10, "the scheduler back")


def test_log_level_option_leaves_info_lines_out(node: Machine) -> None:
    override_scheduler(node, "quiet", "--log-level", "warning")
    since = node.sh("date +%s", check=True).stdout.strip()
    node.sh(f"systemctl daemon-reload && systemctl restart {SCHEDULER}", check=True)
    assert node.show(SCHEDULER)["SubState"] == "running"
    node.sh(f"rm {DROPIN}/quiet.conf && systemctl daemon-reload", check=True)
    node.sh(f"systemctl restart {SCHEDULER}", check=True)
    # before the first restart | the run with --log-level warning | the run without
    runs = node.journal(SCHEDULER, f"--since @{since}").split("Stopping zcron-scheduler.service")
    assert len(runs) == 3, runs
    assert "jobs loaded" not in runs[1] and "jobs loaded" in runs[2]


def test_enabled_units_come_back_after_a_reboot(node: Machine) -> None:
    if isinstance(node, Host):
        pytest.skip("does not reboot the host")
    node.poweroff()
    node.boot()
    for unit in (SCHEDULER, WORKER, SINK):
        wait_until(lambda u=unit: node.show(u)["SubState"] == "running", 20, f"{unit} after boot")
    assert node.show(SCHEDULER)["StatusText"].endswith("0 schedule errors")
